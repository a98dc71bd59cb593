"""The multi-granularity rater (paper §3.1, "Multi-granularity perception"; method.md "Rater")."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn


@dataclass
class RaterConfig:
    feature_dim: int  # image_emb ⊕ text_emb (from the data)
    text_dim: int  # the text_emb part, the last text_dim features (from the data)
    hidden_dim: int
    group_hidden_dim: int
    use_group: bool  # False: the ablation without the Group MLP (W_b = 1)
    # > 0: add a low-rank bilinear image × text term to the instance logit, (U f_image) · (V f_text) / sqrt(rank).
    # An MLP over the concatenation must learn "does this caption fit this image" from scratch; the bilinear term
    # is that comparison's natural form (CLIP's score is one), so a caption that belongs elsewhere can be told apart.
    interaction_rank: int
    # True: one more input feature, the cosine of the pair in a frozen contrastive image ↔ text projection fitted on
    # the clean val pairs (models/alignment.py; the default run fits it anyway for evaluation). The frozen features
    # come from two unrelated encoders; whether a caption belongs to its image is a comparison an MLP over their
    # concatenation would have to learn from the meta-gradient alone. The rater learns how much to trust it.
    alignment_feature: bool
    # True (embedding-space proxy only): two more inputs read off a frozen copy of the reference proxy θ̂ as it stands
    # after warm-up: its loss with the caption, L̂(x, c), and the caption's gain L̂(x, ∅) − L̂(x, c) (how much the
    # caption helps predict this image: a pointwise mutual information), both at proxy_feature_timesteps fixed
    # timesteps with fixed noise, so they are functions of the features alone. The prior's gain ranks wrong
    # captions at ROC-AUC 0.83-0.93 on the embedded corpus, but an MLP over image ⊕ text cannot learn that
    # comparison from ~10^4 noisy meta-gradient draws; given it as an input, the meta-gradient decides its weight.
    proxy_features: bool
    proxy_feature_timesteps: int
    # True: image_emb ⊕ text_emb themselves feed the MLPs (the paper's rater). False: only the derived inputs (the
    # alignment cosine, the proxy's two values). Measured on the embedded corpus: with the 1,408 embedding
    # dimensions in, the rater fits the meta-gradient's noise along them and ranks wrong captions at ROC-AUC 0.63
    # although the prior's caption gain, one of its inputs, ranks them at 0.90; with the derived inputs alone, 0.81.
    embedding_inputs: bool
    # True: two more inputs that compare the pair with the clean val pairs (frozen copies of at most
    # reference_max_rows of their embeddings, stored with the weights): the caption's typicality, the mean cosine of
    # its text_emb to its reference_k nearest val captions (gibberish, file names, boilerplate and keyword lists sit
    # far from any caption the user wants), and the caption's agreement with what the val set says of such images,
    # its mean cosine to the captions of the reference_k val images nearest to this image. What "clean" looks like
    # comes from the val split the user chose, not from a list of defect kinds; the meta-gradient decides the weight.
    reference_inputs: bool
    reference_k: int
    reference_max_rows: int
    # > 1: the proxy_features inputs are cross-fitted. The pool is split into proxy_folds parts by a hash of each row's
    # features (content-independent, so the parts are random halves, and the same row lands in the same part at
    # training and at scoring), one prior per part is warmed up on the OTHER parts, and a row's inputs come from the
    # prior that never trained on it. A prior that trained on a row has memorised it (7 epochs of the embedded pool
    # in the warm-up): a caption that belongs to no image is then as "explained" as a true one. Measured on the
    # embedded pool (benchmarks/reference_signals.py): the caption gain's ROC-AUC on caption defects 0.73-0.87
    # (trained on the row) → 0.82-0.94 (cross-fitted), a 50% top-k by it alone 21.0% → 17.8% defective.
    proxy_folds: int = 1
    # True: one more input, the pair's local image anomaly against the clean val images (PatchCore, Roth et al.
    # 2022): for each of the image's patch cells (features' patch_emb, the last patch_dim features, cells of
    # patch_cell_dim), its cosine to the nearest of patch_bank_size val patches (a seeded sample, stored with the
    # weights); the input is 1 − the worst cell's. The pooled image_emb averages away what covers part of an image
    # (overlaid text, logos, watermarks); a local cell unlike any clean patch does not. The meta-gradient decides
    # its weight, as for every derived input.
    patch_inputs: bool = False
    patch_dim: int = 0  # width of the patch part of the features (from the data; 0 = none)
    patch_cell_dim: int = 128
    patch_bank_size: int = 2048
    # True (with patch_inputs): two more inputs that read the whole image against the clean val images, where the
    # worst cell reads one place: 1 − the MEAN over the cells of the nearest val patch's cosine, and 1 − the cosine of
    # image_emb to the nearest val image (PatchCore's image-level score beside its patch score). A degradation of the
    # whole image (compression, blur, a resize, a colour change) moves every cell a little and no single cell far.
    global_anomaly_inputs: bool = False
    # True: two instance MLPs, one over the image-side derived inputs (the prior's loss L̂, the patch anomalies) and one
    # over the caption-side ones (the alignment cosine, the caption gain, the reference values), and the instance
    # logit is their soft minimum, −log(e^−a_image + e^−a_caption): a pair is as good as its weaker side, so a clean
    # image cannot buy back a caption that does not describe it, nor the reverse. One MLP over all inputs learns an
    # additive compromise, in which the side that explains more of the meta-gradient's variance takes the weight.
    two_sided: bool = False
    # How two_sided joins the sides: "softmin" as above, or "product": log σ(a_image) + log σ(a_caption), the log of
    # "both sides are good". The soft minimum sends each side gradient only where it holds the minimum, so a side whose
    # logits sit lower on every row can starve the other; in the product each side's gradient depends on itself alone.
    two_sided_combine: str = "softmin"
    # > 1: the rater is an ensemble of this many instance MLPs, member r trained by its own meta phase from the one
    # shared warm-up (training/bilevel.py); the score is the mean of the members' logits, each standardised by its
    # pool mean and spread. The meta-gradient draws are noisy: one phase's ranking moves by about a point of
    # defective share between seeds, and which defect kinds it keeps moves with it.
    ensemble: int = 1
    # > 1 (with alignment_feature): the alignment cosine is cross-fitted on the pool. The pool is split into this many
    # parts by a hash of each row's caption embedding (rows that share a caption, e.g. an image with a logo pasted on
    # and its original, fall in one part), one projection per part is fitted on the val pairs plus the OTHER parts'
    # rows, and a row is read by the projection that never saw its caption. 200 val pairs are few for a contrastive
    # fit; the pool is ten times more, and its noise is what CLIP-style training tolerates. Rows outside the pool
    # (another corpus) are read the same way, by their caption's part.
    alignment_folds: int = 1
    alignment_config: dict | None = None  # the projection's AlignmentConfig (from its artifact, not from conf)
    proxy_config: dict | None = None  # the proxy's ProxyConfig (from training, not from conf)


def _instance_mlp(inputs: int, hidden: int) -> nn.Sequential:
    """The instance MLP (one per ensemble member, one per side with two_sided): inputs → hidden → hidden → logit."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, 1))


class Rater(nn.Module):
    def __init__(self, config: RaterConfig):
        super().__init__()
        self.config = config
        # Feature layout: image_emb | text_emb | patch_emb (the last only when the data carries patches).
        self.base_dim = config.feature_dim - config.patch_dim
        self.image_dim = self.base_dim - config.text_dim
        self.alignment = None
        if config.alignment_feature:
            if config.alignment_config is None:
                raise ValueError("alignment_feature needs alignment_config (the fitted projection's config)")
            from alchemist_kedro.models.alignment import AlignmentConfig, AlignmentModel

            self.alignment = AlignmentModel(AlignmentConfig(**config.alignment_config)).requires_grad_(False)
            if config.alignment_folds < 1:
                raise ValueError(f"rater.model.alignment_folds must be >= 1, got {config.alignment_folds}")
            # Part f's projection is alignment (f = 0) or fold_alignments[f - 1], as for the fold priors.
            self.fold_alignments = nn.ModuleList(
                AlignmentModel(AlignmentConfig(**config.alignment_config)).requires_grad_(False)
                for _ in range(config.alignment_folds - 1))
        self.proxy = None
        self.prior_patches = False
        if config.proxy_features:
            from alchemist_kedro.models.proxy import EmbeddingProxy, ProxyConfig, prior_cell_width, stratified_timesteps

            if config.proxy_config is None or config.proxy_config.get("space") != "embedding":
                raise ValueError("rater.model.proxy_features reads an embedding-space proxy: set rater.proxy.space=embedding, "
                                 "or proxy_features=false with embedding_inputs=true for the pixel proxy")
            proxy_config = ProxyConfig(**config.proxy_config)
            self.prior_patches = proxy_config.patch_cells
            if self.prior_patches and config.patch_dim < 1:
                raise ValueError("rater.proxy.patch_cells: the prior models the patch cells, so the rater needs "
                                 "features with patch_emb (features.image_encoder.patch_grid > 0)")
            # The prior's "image": image_emb, or [image_emb ; patch cells] (models/proxy.py prior_input).
            image_dim = self.image_dim
            if self.prior_patches:
                cells = config.patch_dim // config.patch_cell_dim
                image_dim += cells * prior_cell_width(self.image_dim, cells, config.patch_cell_dim)
            self.proxy = EmbeddingProxy(proxy_config, image_dim, caption_dim=config.text_dim).requires_grad_(False)
            if config.proxy_folds < 1:
                raise ValueError(f"rater.model.proxy_folds must be >= 1, got {config.proxy_folds}")
            # Fold f's prior is proxy (f = 0) or fold_proxies[f - 1]; the state dict keeps proxy.* as before.
            self.fold_proxies = nn.ModuleList(
                EmbeddingProxy(proxy_config, image_dim, caption_dim=config.text_dim).requires_grad_(False)
                for _ in range(config.proxy_folds - 1))
            k = config.proxy_feature_timesteps
            self.register_buffer("proxy_timesteps", stratified_timesteps(k, proxy_config.num_train_timesteps))
            # Fixed noise, one draw per timestep shared by every sample: common random numbers across the corpus.
            self.register_buffer("proxy_noise", torch.randn((k, image_dim), generator=torch.Generator().manual_seed(0)))
        if config.reference_inputs:
            if config.text_dim < 1:
                raise ValueError("rater.model.reference_inputs compares text_emb with the val captions: text_dim must be > 0")
            image_dim = self.image_dim
            rows = int(config.reference_max_rows)
            self.register_buffer("reference_image", torch.zeros(rows, image_dim))
            self.register_buffer("reference_text", torch.zeros(rows, config.text_dim))
            self.register_buffer("reference_rows", torch.zeros((), dtype=torch.int64))
        if config.patch_inputs:
            if config.patch_dim < 1 or config.patch_cell_dim < 1 or config.patch_dim % config.patch_cell_dim:
                raise ValueError(f"rater.model.patch_inputs needs features with patch_emb (features.image_encoder."
                                 f"patch_grid > 0) whose width ({config.patch_dim}) is a multiple of patch_cell_dim "
                                 f"({config.patch_cell_dim}, globals.yml patch_dim)")
            self.register_buffer("patch_bank", torch.zeros(int(config.patch_bank_size), config.patch_cell_dim))
            self.register_buffer("patch_bank_rows", torch.zeros((), dtype=torch.int64))
        if config.global_anomaly_inputs:
            if not config.patch_inputs:
                raise ValueError("rater.model.global_anomaly_inputs reads the patch bank: set patch_inputs true")
            self.register_buffer("image_bank", torch.zeros(int(config.patch_bank_size), self.image_dim))
            self.register_buffer("image_bank_rows", torch.zeros((), dtype=torch.int64))
        derived = ((1 if self.alignment is not None else 0) + (2 if self.proxy is not None else 0)
                   + (2 if config.reference_inputs else 0) + (1 if config.patch_inputs else 0)
                   + (2 if config.global_anomaly_inputs else 0))
        if not config.embedding_inputs and (derived == 0 or config.interaction_rank > 0):
            raise ValueError("embedding_inputs=false leaves the rater only its derived inputs: it needs "
                             "alignment_feature or proxy_features, and interaction_rank 0 (the interaction reads the "
                             "embeddings)")
        d = (self.base_dim if config.embedding_inputs else 0) + derived
        self.image_columns: list[int] = []
        self.caption_columns: list[int] = []
        if config.two_sided_combine not in ("softmin", "product"):
            raise ValueError("rater.model.two_sided_combine must be softmin or product, not "
                             f"{config.two_sided_combine!r}")
        if config.two_sided:
            if config.embedding_inputs or config.interaction_rank > 0 or config.ensemble > 1:
                raise ValueError("rater.model.two_sided splits the derived inputs: set embedding_inputs false, "
                                 "interaction_rank 0 and ensemble 1")
            # The column order of inputs(): alignment, L̂, gain, reference typicality / agreement, patch anomalies.
            sides = (["caption"] if self.alignment is not None else []) + (
                ["image", "caption"] if self.proxy is not None else []) + (
                ["caption", "caption"] if config.reference_inputs else []) + (
                ["image"] if config.patch_inputs else []) + (["image"] * 2 if config.global_anomaly_inputs else [])
            self.image_columns = [j for j, side in enumerate(sides) if side == "image"]
            self.caption_columns = [j for j, side in enumerate(sides) if side == "caption"]
            if not self.image_columns or not self.caption_columns:
                raise ValueError("rater.model.two_sided needs an image-side input (proxy_features or patch_inputs) "
                                 "and a caption-side one (alignment_feature, proxy_features or reference_inputs)")
        # Standardisation is fixed (computed once on the pool, stored with the weights), not per batch: the
        # instance logit is the corpus-wide ranking key, so it must not depend on which batch a sample sits in.
        self.register_buffer("feature_mean", torch.zeros(d))
        self.register_buffer("feature_std", torch.ones(d))
        self.instance_mlp = _instance_mlp(len(self.image_columns) or d, config.hidden_dim)
        self.caption_mlp = _instance_mlp(len(self.caption_columns), config.hidden_dim) if config.two_sided else None
        self.interaction = None
        if config.interaction_rank > 0:
            image_dim = self.image_dim
            self.interaction = nn.ModuleDict({
                "image": nn.Linear(image_dim, config.interaction_rank, bias=False),
                "text": nn.Linear(config.text_dim, config.interaction_rank, bias=False),
            })
        self.group_mlp = (
            nn.Sequential(nn.Linear(2 * d, config.group_hidden_dim), nn.GELU(), nn.Linear(config.group_hidden_dim, 1))
            if config.use_group
            else None
        )
        if config.ensemble < 1:
            raise ValueError(f"rater.model.ensemble must be >= 1, got {config.ensemble}")
        if config.ensemble > 1 and self.interaction is not None:
            raise ValueError("rater.model.ensemble > 1 averages instance MLPs: set interaction_rank 0")
        # Members 1.. initialised from seeds after the one in force, on a forked RNG: member 0 and every module built
        # after the rater start exactly as with one member.
        with torch.random.fork_rng():
            seed = torch.initial_seed()
            members = []
            for r in range(1, config.ensemble):
                torch.manual_seed(seed + r)
                members.append(_instance_mlp(d, config.hidden_dim))
        self.extra_members = nn.ModuleList(members)
        if config.ensemble > 1:  # (not in one-member state dicts: artifacts written before the option load as they are)
            # Each member's logit mean and spread on the pool (set when its meta phase ends), so members count alike.
            self.register_buffer("member_mean", torch.zeros(config.ensemble))
            self.register_buffer("member_std", torch.ones(config.ensemble))
        # Training reads one member (its meta phase); None = the ensemble's score. Not part of the state dict.
        self.active_member: int | None = None

    @torch.no_grad()
    def attach_proxy(self, *proxies: nn.Module) -> None:
        """Copy the warm-up prior's weights (and data statistics) into the rater's frozen one; with proxy_folds > 1,
        one prior per fold, fold f's trained without the rows of fold f (see fold_of)."""
        if self.proxy is None:
            raise ValueError("this rater was built without proxy_features")
        if len(proxies) != self.config.proxy_folds:
            raise ValueError(f"the rater has {self.config.proxy_folds} proxy folds, got {len(proxies)} priors")
        for mine, proxy in zip(self._fold_proxies(), proxies):
            mine.network.load_state_dict(proxy.network.state_dict())

    def _fold_proxies(self) -> list[nn.Module]:
        return [self.proxy, *self.fold_proxies]

    @torch.no_grad()
    def proxy_inputs(self, image: torch.Tensor, text: torch.Tensor, folds: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 2): L̂(x, c) and L̂(x, ∅) − L̂(x, c), each the mean over the fixed timesteps. The prior reads the caption
        as its sentence embedding (text_emb; the rater pipeline trains it on the same). `folds` (N,): which fold's
        prior reads each row (proxy_folds > 1)."""
        if self.config.proxy_folds > 1:
            if folds is None:
                raise ValueError("a cross-fitted rater needs each row's fold (fold_of(features))")
            out = torch.empty((len(image), 2), dtype=torch.float32, device=image.device)
            for f, proxy in enumerate(self._fold_proxies()):
                rows = folds == f
                if rows.any():
                    out[rows] = self._prior_values(proxy, image[rows], text[rows]).float()
            return out
        return self._prior_values(self.proxy, image, text)

    def _prior_values(self, proxy: nn.Module, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        proxy = proxy.eval()
        x0 = proxy.encode(image)
        n, k = len(x0), len(self.proxy_timesteps)
        x0k = x0.repeat_interleave(k, 0)
        t = self.proxy_timesteps.repeat(n)
        noise = self.proxy_noise.repeat(n, 1).to(x0.dtype)
        tokens = text[:, None, :].repeat_interleave(k, 0)
        ones = torch.ones(n * k, 1, dtype=torch.int64, device=x0.device)
        own = proxy.loss_at(x0k, t, noise, tokens, ones).view(n, k).mean(1)
        null = proxy.loss_at(x0k, t, noise, torch.zeros_like(tokens), torch.zeros_like(ones))
        return torch.stack([own, null.view(n, k).mean(1) - own], dim=-1)

    @torch.no_grad()
    def attach_reference(self, val_features: torch.Tensor, seed: int = 0) -> None:
        """Store (a seeded sample of at most reference_max_rows of) the val pairs' L2-normalised embeddings."""
        if not self.config.reference_inputs:
            raise ValueError("this rater was built without reference_inputs")
        if len(val_features) < self.config.reference_k:
            raise ValueError(f"reference_inputs needs at least reference_k={self.config.reference_k} val pairs, "
                             f"got {len(val_features)}")
        rows = min(len(val_features), int(self.config.reference_max_rows))
        pick = torch.randperm(len(val_features), generator=torch.Generator().manual_seed(seed))[:rows].sort().values
        split = self.image_dim
        chosen = val_features[pick.to(val_features.device)].float()
        self.reference_image.zero_(), self.reference_text.zero_()
        self.reference_image[:rows] = nn.functional.normalize(chosen[:, :split], dim=1)
        self.reference_text[:rows] = nn.functional.normalize(chosen[:, split:self.base_dim], dim=1)
        self.reference_rows.fill_(rows)

    def _cells(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) → (N, cells, patch_cell_dim) unit-norm patch descriptors."""
        patches = features[..., self.base_dim:].float()
        return nn.functional.normalize(patches.reshape(len(patches), -1, self.config.patch_cell_dim), dim=-1)

    @torch.no_grad()
    def attach_patch_bank(self, val_features: torch.Tensor, seed: int = 0) -> None:
        """Store a seeded sample of at most patch_bank_size of the val images' patch cells (the clean reference)."""
        if not self.config.patch_inputs:
            raise ValueError("this rater was built without patch_inputs")
        cells = self._cells(val_features).reshape(-1, self.config.patch_cell_dim)
        if len(cells) == 0:
            raise ValueError("patch_inputs needs val pairs with patch descriptors, got none")
        rows = min(len(cells), int(self.config.patch_bank_size))
        pick = torch.randperm(len(cells), generator=torch.Generator().manual_seed(seed))[:rows].sort().values
        self.patch_bank.zero_()
        self.patch_bank[:rows] = cells[pick.to(cells.device)]
        self.patch_bank_rows.fill_(rows)
        if self.config.global_anomaly_inputs:
            images = nn.functional.normalize(val_features[:, :self.image_dim].float(), dim=1)
            rows = min(len(images), int(self.config.patch_bank_size))
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:rows].sort().values
            self.image_bank.zero_()
            self.image_bank[:rows] = images[pick.to(images.device)]
            self.image_bank_rows.fill_(rows)

    @torch.no_grad()
    def patch_values(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 1): 1 − the lowest over the image's cells of the cosine to the nearest clean val patch; with
        global_anomaly_inputs (N, 3): that, 1 − the mean over the cells, and 1 − image_emb's cosine to the nearest val
        image."""
        rows = int(self.patch_bank_rows)
        if rows < 1:
            raise ValueError("the rater's patch bank is empty: attach_patch_bank(val features) before use")
        bank = self.patch_bank[:rows]
        wide = self.config.global_anomaly_inputs
        images = self.image_bank[:int(self.image_bank_rows)] if wide else None
        out = []
        for start in range(0, len(features), 1024):  # bounded (chunk · cells × bank) similarity matrices
            chunk = features[start:start + 1024]
            nearest = (self._cells(chunk) @ bank.T).amax(-1)  # (n, cells)
            values = [1 - nearest.amin(-1, keepdim=True)]
            if wide:
                image = nn.functional.normalize(chunk[:, :self.image_dim].float(), dim=1)
                values += [1 - nearest.mean(-1, keepdim=True), 1 - (image @ images.T).amax(-1, keepdim=True)]
            out.append(torch.cat(values, dim=-1))
        return torch.cat(out) if out else torch.zeros((0, 3 if wide else 1), device=features.device)

    @torch.no_grad()
    def reference_values(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(N, 2): caption typicality and caption agreement with the val captions of the nearest val images."""
        rows, k = int(self.reference_rows), int(self.config.reference_k)
        if rows < k:
            raise ValueError("the rater's reference set is empty: attach_reference(val features) before use")
        ref_image, ref_text = self.reference_image[:rows], self.reference_text[:rows]
        text = nn.functional.normalize(text.float(), dim=1)
        image = nn.functional.normalize(image.float(), dim=1)
        out = []
        for start in range(0, len(text), 4096):  # bounded (chunk × rows) similarity matrices
            t, i = text[start:start + 4096], image[start:start + 4096]
            text_sim = t @ ref_text.T
            typicality = text_sim.topk(k, dim=1).values.mean(1)
            nearest = (i @ ref_image.T).topk(k, dim=1).indices
            agreement = text_sim.gather(1, nearest).mean(1)
            out.append(torch.stack([typicality, agreement], dim=-1))
        return torch.cat(out) if out else torch.zeros((0, 2), device=text.device)

    def alignment_parts(self, text: torch.Tensor) -> torch.Tensor:
        """(N,) the part of alignment_folds each row's caption falls in (0 when not cross-fitted)."""
        if self.config.alignment_folds < 2:
            return torch.zeros(len(text), dtype=torch.long, device=text.device)
        return fold_of(text, self.config.alignment_folds)

    def alignment_values(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The alignment cosine, each row read by its caption part's projection (alignment_folds)."""
        models = [self.alignment, *self.fold_alignments]
        if len(models) == 1:
            return self.alignment.eval()(image, text)
        cosines = torch.stack([model.eval()(image, text) for model in models], dim=-1)
        return cosines.gather(-1, self.alignment_parts(text)[..., None]).squeeze(-1)

    def inputs(self, features: torch.Tensor) -> torch.Tensor:
        """image_emb ⊕ text_emb (embedding_inputs), plus the derived inputs the rater has: the alignment cosine, the
        proxy's two values, the two reference values, the patch anomaly (and its global pair). patch_emb itself never
        reaches the MLPs."""
        base, split = self.base_dim, self.image_dim
        if (self.alignment is None and self.proxy is None and not self.config.reference_inputs
                and not self.config.patch_inputs):
            return features[..., :base]
        image, text = features[..., :split], features[..., split:base]
        parts = [features[..., :base]] if self.config.embedding_inputs else []
        with torch.no_grad():
            if self.alignment is not None:
                parts.append(self.alignment_values(image, text).unsqueeze(-1))
            if self.proxy is not None:
                folds = fold_of(features[..., :base], self.config.proxy_folds) if self.config.proxy_folds > 1 else None
                prior_image = image
                if self.prior_patches:  # the prior's "image" as the rater pipeline built it for training
                    from alchemist_kedro.models.proxy import prior_input

                    prior_image = prior_input(image, features[..., base:], self.config.patch_cell_dim)
                parts.append(self.proxy_inputs(prior_image, text, folds).to(features.dtype))
            if self.config.reference_inputs:
                parts.append(self.reference_values(image, text).to(features.dtype))
            if self.config.patch_inputs:
                parts.append(self.patch_values(features).to(features.dtype))
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def set_standardisation(self, features: torch.Tensor) -> None:
        features = self.inputs(features)
        self.feature_mean.copy_(features.mean(0))
        # Floor: a constant feature dimension (padding, a dead unit) would otherwise divide by ~0.
        self.feature_std.copy_(features.std(0).clamp_min(1e-4))

    def standardise(self, features: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        """prepared: `features` already went through `inputs` (training computes the frozen inputs once per row)."""
        return ((features if prepared else self.inputs(features)) - self.feature_mean) / self.feature_std

    def member(self, r: int) -> nn.Module:
        return self.instance_mlp if r == 0 else self.extra_members[r - 1]

    def _logits(self, f: torch.Tensor) -> torch.Tensor:
        if self.config.ensemble > 1:
            if self.active_member is not None:
                return self.member(self.active_member)(f).squeeze(-1)
            z = [(self.member(r)(f).squeeze(-1) - self.member_mean[r]) / self.member_std[r]
                 for r in range(self.config.ensemble)]
            return torch.stack(z).mean(0)
        if self.caption_mlp is not None:
            sides = self.side_logits(f)
            if self.config.two_sided_combine == "product":
                return nn.functional.logsigmoid(sides).sum(-1)
            return sides.neg().logsumexp(-1).neg()
        logits = self.instance_mlp(f).squeeze(-1)
        if self.interaction is not None:
            split = self.image_dim
            image = self.interaction["image"](f[..., :split])
            text = self.interaction["text"](f[..., split:split + self.config.text_dim])
            logits = logits + (image * text).sum(-1) / self.config.interaction_rank**0.5
        return logits

    def side_logits(self, f: torch.Tensor) -> torch.Tensor:
        """two_sided: (N, 2) the image side's and the caption side's logits of standardised inputs f."""
        return torch.cat([self.instance_mlp(f[..., self.image_columns]),
                          self.caption_mlp(f[..., self.caption_columns])], dim=-1)

    def instance_logits(self, features: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        return self._logits(self.standardise(features, prepared))

    def forward(self, features: torch.Tensor, prepared: bool = False):
        """features (B, F) → (logits (B,), instance weights (B,), batch weight (), weights W (B,))."""
        f = self.standardise(features, prepared)
        logits = self._logits(f)
        # eq. 7: ONE softmax over the raw logits. The official code's softmax(sigmoid(·)) then softmax again
        # leaves weights within ~1% of uniform at batch 32 (method.md), i.e. no selection signal.
        instance_weights = torch.softmax(logits, dim=0)
        if self.group_mlp is not None:
            group_stat = torch.cat([f.mean(0), f.var(0, unbiased=False)])
            batch_weight = torch.sigmoid(self.group_mlp(group_stat)).squeeze(-1)
        else:
            batch_weight = torch.ones((), dtype=f.dtype, device=f.device)
        return logits, instance_weights, batch_weight, instance_weights * batch_weight


_FOLD_MULTIPLIERS: dict[int, np.ndarray] = {}


def fold_of(features: torch.Tensor, folds: int) -> torch.Tensor:
    """(N,) fold index in [0, folds) of each row: a hash of the row's float32 bits (a fixed random odd multiplier per
    column, summed with wrap-around, then a 64-bit finaliser). A function of the features alone, so a row falls in
    the same fold when the rater trains and when select scores it, and independent of what the row shows, so the
    folds are random parts of the pool."""
    bits = np.ascontiguousarray(features.detach().float().cpu().numpy()).view(np.uint32).astype(np.uint64)
    width = bits.shape[1]
    if width not in _FOLD_MULTIPLIERS:
        rng = np.random.default_rng(0x5EED)
        _FOLD_MULTIPLIERS[width] = rng.integers(1, 2**63, size=width, dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = (bits * _FOLD_MULTIPLIERS[width]).sum(1, dtype=np.uint64)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
    return torch.from_numpy((h % np.uint64(folds)).astype(np.int64)).to(features.device)


@torch.no_grad()
def score_with_rater(rater: Rater, features, batch_size: int = 4096) -> np.ndarray:
    """Instance logits for (N, F) features: the batch-independent score (method.md), higher = better."""
    rater.eval()
    device = next(iter(rater.parameters())).device
    features = torch.as_tensor(np.asarray(features, dtype=np.float32))
    out = [rater.instance_logits(features[i : i + batch_size].to(device)).cpu()
           for i in range(0, len(features), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def rater_to_artifact(rater: Rater) -> dict:
    """What the `rater_model` dataset stores: state dict (safetensors) + config (JSON)."""
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in rater.state_dict().items()},
            "config": asdict(rater.config)}


def rater_from_artifact(artifact: dict) -> Rater:
    # Artifacts written before these options existed: no interaction term (text_dim is then unused), no derived
    # inputs, the embeddings in.
    config = {"text_dim": 0, "interaction_rank": 0, "alignment_feature": False, "proxy_features": False,
              "proxy_feature_timesteps": 4, "embedding_inputs": True, "reference_inputs": False, "reference_k": 10,
              "reference_max_rows": 4096, "proxy_folds": 1, "patch_inputs": False, "patch_dim": 0, "alignment_folds": 1,
              **artifact["config"]}
    rater = Rater(RaterConfig(**config))
    rater.load_state_dict(artifact["state_dict"])
    rater.eval()
    return rater


def weight_entropy(instance_weights: torch.Tensor) -> float:
    """Entropy of the instance weights over log(B): 1 = uniform, 0 = one sample takes all."""
    w = instance_weights.detach().clamp_min(1e-12)
    return float(-(w * w.log()).sum() / np.log(len(w))) if len(w) > 1 else 1.0


__all__ = ["Rater", "RaterConfig", "fold_of", "score_with_rater", "rater_to_artifact", "rater_from_artifact", "weight_entropy"]
