"""DAM-Net networks: the change generator, the segmentation-discriminator and the MAE."""

from damnet.models.changenet import (
    MAE,
    PRESETS,
    ChangeNet,
    ModelConfig,
    MultiTemporalTransformer,
    SegDiscriminator,
    count_flops,
    count_parameters,
    discriminator_input,
    preset,
)

__all__ = [
    "MAE", "PRESETS", "ChangeNet", "ModelConfig", "MultiTemporalTransformer", "SegDiscriminator",
    "count_flops", "count_parameters", "discriminator_input", "preset",
]
