"""Selective prediction: conformal sets, the precision threshold, the modality-disagreement check,
and the review queue that routes the answers the model should not make alone to a person."""
