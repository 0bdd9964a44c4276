"""``DatasetAugmentationWorkChain``: diverse training structures from a few inputs.

A thin AiiDA shell around :func:`aiida_trainspot.augmentation.generators.augment`:
inputs are validated at submission (every problem named with its port), the
augmentation runs in one calcfunction so every output dataset is linked to the
input structures, parameters and seed in the provenance graph.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import WorkChain, calcfunction

from aiida_trainspot.common.validators import validate_seed
from aiida_trainspot.data import PESData

from .generators import AUGMENTATION_KEYS, augment, validate_frames
from .params import validate_parameters

UNION = 'all'


@calcfunction
def augment_structures(structures: PESData, parameters: orm.Dict, seed: orm.Int) -> dict[str, Any]:
    """Apply the augmentations to ``structures``; one dataset per augmentation plus their union."""
    frames = structures.to_ase()
    generated = augment(frames, parameters.get_dict(), seed.value)
    outputs = {key: PESData.from_ase(generated[key]) for key in AUGMENTATION_KEYS}
    outputs[UNION] = PESData.concatenate([outputs[key] for key in AUGMENTATION_KEYS])
    return outputs


def _validate_parameters(value: orm.Dict | None, _: Any) -> str | None:
    if value is None:
        return None
    errors = validate_parameters(value.get_dict())
    if errors:
        return 'parameters: ' + '; '.join(errors)
    return None


def _validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
    structures = inputs.get('structures')
    if structures is None:
        return None
    parameters = inputs.get('parameters')
    params = parameters.get_dict() if parameters is not None else {}
    if validate_parameters(params):
        return None  # reported by the port validator
    errors = validate_frames(structures.to_ase(), params)
    if errors:
        return 'structures: ' + '; '.join(errors)
    return None


class DatasetAugmentationWorkChain(WorkChain):
    """Augment a few input structures into a diverse dataset (no labels yet).

    Supercells, rattled and strained frames, vacancies, clusters, slabs, isolated
    atoms, substitutions and alloys (see :mod:`aiida_trainspot.augmentation.params`
    for every parameter and its default), each frame tagged with its generation
    method, parameters and parent.
    """

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input(
            'structures',
            valid_type=PESData,
            help='The input structures (a few crystals, slabs or molecules; labels are ignored).',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            validator=_validate_parameters,
            help='Augmentation parameters by section (e.g. {"rattle": {"fraction": 0.3}}); '
            'defaults follow the AiiDA-TrainsPot paper. Alloys need "alloys.species".',
        )
        spec.input(
            'seed',
            valid_type=orm.Int,
            default=lambda: orm.Int(0),
            validator=validate_seed,
            help='Seed of every random draw: same inputs and seed give the same frames.',
        )
        spec.inputs.validator = _validate_inputs
        spec.outline(cls.run_augmentation, cls.results)
        spec.output_namespace(
            'datasets',
            valid_type=PESData,
            dynamic=True,
            help=f'One dataset per augmentation: {", ".join(AUGMENTATION_KEYS)}.',
        )
        spec.output('dataset', valid_type=PESData, help='The union of all augmented datasets.')

    def run_augmentation(self) -> None:
        """Run the augmentations in one calcfunction (cheap numerics, full provenance)."""
        inputs = self.inputs
        self.ctx.outputs = augment_structures(inputs.structures, inputs.parameters, inputs.seed)

    def results(self) -> None:
        """Expose every dataset and report what was made."""
        outputs = dict(self.ctx.outputs)
        union = outputs.pop(UNION)
        self.out('datasets', outputs)
        self.out('dataset', union)
        counts = ', '.join(f'{key} {len(node)}' for key, node in outputs.items() if len(node))
        self.report(
            f'augmented {len(self.inputs.structures)} inputs into {len(union)} frames: {counts}'
        )
