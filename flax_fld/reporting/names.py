"""Names the paper's tables use: backbone display names, method row labels and the class column order."""

from collections.abc import Sequence

# The paper's names for the backbones in Tables 1 and 2.
BACKBONE_DISPLAY_NAMES = {
    "squeezenet1_1": "SqueezeNet",
    "resnet18": "ResNet",
    "cbam_resnet18": "CBAM",
    "se_resnet18": "SENet",
    "vit": "ViT",
}

# Table 2's rows per backbone: the classifier alone, with the decouplers, and with adversarial training too.
TABLE2_ROWS = ("baseline", "icfdnet", "icfdnet_at")

# The paper's class columns, left to right (its label order differs).
PAPER_CLASS_ORDER = ("mild", "moderate", "severe", "normal")


def method_name(classifier: str, use_decouplers: bool, adversarial: bool) -> str:
    """The paper's row label, e.g. ``SqueezeNet+ICFDNet+AT``; an unknown classifier keeps its own name."""
    name = BACKBONE_DISPLAY_NAMES.get(classifier, classifier)
    if use_decouplers:
        name += "+ICFDNet"
    if adversarial:
        name += "+AT"
    return name


def paper_column_order(class_names: Sequence[str]) -> list[str]:
    """``class_names`` in the paper's column order when they are its four classes (any case); else as given."""
    by_lower = {name.lower(): name for name in class_names}
    if len(class_names) == len(PAPER_CLASS_ORDER) and set(by_lower) == set(PAPER_CLASS_ORDER):
        return [by_lower[name] for name in PAPER_CLASS_ORDER]
    return list(class_names)
