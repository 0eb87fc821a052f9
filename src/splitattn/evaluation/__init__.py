"""Evaluation loops (:mod:`.evaluate`), their metrics (:mod:`.metrics`) and loading a trained model to
predict with (:mod:`.predict`)."""

from .evaluate import evaluate_classifier, evaluate_detection, evaluate_folder, evaluate_segmentation
from .predict import export_weights, imagenet_classes, load_for_inference, predict_images

__all__ = ["evaluate_classifier", "evaluate_detection", "evaluate_folder", "evaluate_segmentation",
           "export_weights", "imagenet_classes", "load_for_inference", "predict_images"]
