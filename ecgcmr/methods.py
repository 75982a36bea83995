"""The pretraining methods compared, in one table: what each needs and what its ECG encoder is.

======== ================================================================================
dual     the paper: ECG aligned with CMR at ED **and** ES (stage C, the three-term loss)
ed, es   single-phase alignment (stage C with the ECG↔ED or ECG↔ES term only)
ecg_only the masked-autoencoder ECG encoder of stage B, no CMR
random   a randomly initialised ECG encoder (seeded): the floor
======== ================================================================================

The single-phase baselines are weight settings of the same loss (DESIGN.md §5), so the table
holds the loss weights; which CMR phases (stage-A encoders) and stages a method needs follow
from them. Every reader (notebook 02, the CLI, :mod:`ecgcmr.pretrain`, :mod:`ecgcmr.train`)
asks this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

PHASES: tuple[str, ...] = ("ed", "es")
# the dual-phase loss's three terms, in weight order (ecgcmr.losses.dual_phase_loss)
TERMS: tuple[str, ...] = ("ecg_ed", "ecg_es", "ed_es")


@dataclass(frozen=True)
class Method:
    """One pretraining method."""

    name: str
    description: str
    # weights of (ECG↔ED, ECG↔ES, ED↔ES) in stage C; None: the method has no stage C
    loss_weights: tuple[float, float, float] | None = None
    # the ECG encoder starts from (or is) stage B's masked autoencoder, when it is a ViT
    uses_mae: bool = True

    @property
    def aligned(self) -> bool:
        """Trained by stage C (contrastive alignment with CMR)."""
        return self.loss_weights is not None

    @property
    def phases(self) -> tuple[str, ...]:
        """The CMR phases stage C reads (whose stage-A encoders it needs): ``("ed", "es")``
        for dual, one for a single-phase method, none without stage C."""
        if self.loss_weights is None:
            return ()
        w_ecg_ed, w_ecg_es, w_ed_es = self.loss_weights
        return tuple(p for p, used in (("ed", w_ecg_ed or w_ed_es), ("es", w_ecg_es or w_ed_es))
                     if used)

    def stages(self, ecg_encoder: str = "vit") -> tuple[str, ...]:
        """The pretraining stages this method runs, in order: ``cmr`` (A, once per phase),
        ``ecg`` (B: only a ViT has a masked autoencoder), ``align`` (C)."""
        return ((("cmr",) if self.phases else ())
                + (("ecg",) if self.uses_mae and ecg_encoder == "vit" else ())
                + (("align",) if self.aligned else ()))


METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in (
    Method("dual", "the paper: ECG aligned with CMR at ED and ES", (1 / 3, 1 / 3, 1 / 3)),
    Method("ed", "ECG aligned with CMR at end-diastole only", (1.0, 0.0, 0.0)),
    Method("es", "ECG aligned with CMR at end-systole only", (0.0, 1.0, 0.0)),
    Method("ecg_only", "the ECG masked autoencoder of stage B, no CMR"),
    Method("random", "a randomly initialised ECG encoder (the floor)", uses_mae=False),
)})
ALIGNED: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.aligned)


def get_method(name: str) -> Method:
    """The named method; a clear error lists the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {list(METHODS)}") from None


__all__ = ["ALIGNED", "METHODS", "PHASES", "TERMS", "Method", "get_method"]
