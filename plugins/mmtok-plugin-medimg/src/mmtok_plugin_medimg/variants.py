"""The compared models: the seed's baseline, its disentangled VAE, and the seed's other research
options as switches on the disentangled one (`VAEConfig` fields). Plain data, no torch import,
so the CLI can list them cheaply."""

__all__ = ["VARIANTS", "BASELINE"]

BASELINE = "baseline"

#: name -> (model class name, VAEConfig overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "baseline": ("ConditionalVAE", {}),
    "disentangled": ("DisentangledConditionalVAE", {}),
    "no-separation": ("DisentangledConditionalVAE", {"separation_weight": 0.0, "contrastive_weight": 0.0}),
    "beta-vae": ("DisentangledConditionalVAE", {"kl_weight": 4.0}),
    "beta-tc": ("DisentangledConditionalVAE", {"objective": "beta_tc", "tc_weight": 6.0}),
    "adversarial": ("DisentangledConditionalVAE", {"adversarial_weight": 1.0}),
    "moe-decoder": ("DisentangledConditionalVAE", {"decoder": "moe"}),
}
