"""Data attribution for the downstream T2I model (issue 17): which training pairs made a generation.

unlearning.py: the slow ground truth (Attribution by Unlearning, Wang et al. 2024); ranking.py: mAP@k, the
feature-cosine baselines, the distilled attributor's learning-to-rank training and retrieval (FastGDA, Wang et al.
2025); counterfactual.py: retrain without the attributed pairs. No Kedro here.
"""
