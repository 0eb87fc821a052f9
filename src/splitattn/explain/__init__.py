"""What split attention does: the attention maps of a model (:mod:`.attention`), explanations of images
(:mod:`.explanations`: Grad-CAM, the scale test) and their figures (:mod:`.plots`)."""

from .attention import attention_maps, attention_summary
from .explanations import explain_images, load_explain_model
from .records import ExplainTarget, ImageExplanation

__all__ = ["ExplainTarget", "ImageExplanation", "attention_maps", "attention_summary", "explain_images",
           "load_explain_model"]
