"""DAM-Net networks: the change generator, the segmentation-discriminator and the MAE."""

from damnet.models.changenet import (
    DISC_INPUTS,
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
    "DISC_INPUTS", "MAE", "PRESETS", "ChangeNet", "ModelConfig", "MultiTemporalTransformer",
    "SegDiscriminator",
    "count_flops", "count_parameters", "discriminator_input", "preset",
]
