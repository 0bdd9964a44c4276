"""``TrainsPotWorkChain``: active learning from a few structures to a calibrated committee.

Outline: augmentation (once, optional) → repeat { label the unlabelled frames → train the
committee (warm start from the previous one) → explore with one member drawn at random →
evaluate the explored and the labelled frames → calibrate → select } until no explored frame
exceeds the calibrated thresholds, ``max_iterations`` is reached or ``max_labels`` would be
exceeded. The final committee is always trained on every labelled frame; a selection left
unlabelled is the ``pending`` output, never mixed into the dataset.

Checkpoints: every stage emits what it produced under ``iterations.iteration_<NN>`` as soon as
it ends (labelled dataset, committee, explored frames, calibration, selection and the
iteration's ``record``), so a running campaign can be inspected, and ``restart_from`` a
finished, failed or killed run continues after its last completed stage.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.common.links import LinkType
from aiida.engine import ToContext, WorkChain, if_, while_
from aiida_quantumespresso.workflows.protocols.utils import ProtocolMixin

from aiida_trainspot.augmentation.workchain import DatasetAugmentationWorkChain
from aiida_trainspot.common.engines import LABELLING_ENGINES, engine_class
from aiida_trainspot.common.validators import validate_seed
from aiida_trainspot.data import PESData
from aiida_trainspot.evaluation.calculation import EvaluationCalculation
from aiida_trainspot.evaluation.calibration import HELD_OUT_SPLITS, CalibrationSettings
from aiida_trainspot.evaluation.operations import calibrate_committee, select_for_labelling
from aiida_trainspot.exploration.workchain import ExplorationWorkChain
from aiida_trainspot.labelling.workchain import DEFAULT_ENGINE as DEFAULT_LABELLING_ENGINE
from aiida_trainspot.labelling.workchain import AbInitioLabellingWorkChain
from aiida_trainspot.training.model import PotentialModel
from aiida_trainspot.training.workchain import TrainingWorkChain

from . import inputs as checks
from .loop import STAGES, decide, resume_point, stage_seed
from .operations import (
    frames_to_retry,
    join_datasets,
    labelled_mask,
    partition_by_labels,
    prepare_selection,
    record_iteration,
    summarise_campaign,
)


def iteration_checkpoints(node: orm.ProcessNode) -> dict[str, Any]:
    """The outputs a run has emitted so far, nested (``iterations.iteration_NN.*`` included).

    Read from the RETURN links, so it works on a running, failed or killed run as well.
    """
    return node.base.links.get_outgoing(link_type=LinkType.RETURN).nested()


def last_checkpoint(node: orm.ProcessNode, name: str) -> Any:
    """The latest ``iterations.<it>.<name>`` output of a run, or None."""
    iterations = iteration_checkpoints(node).get('iterations', {})
    for key in sorted(iterations, reverse=True):
        if name in iterations[key]:
            return iterations[key][name]
    return None


def final_committee(
    node: orm.ProcessNode,
) -> tuple[dict[str, PotentialModel], orm.Dict | None, list[str]]:
    """(models by label, calibration ``Dict`` or None, notes) of a run's final committee.

    The committee is the ``models`` output or, for a run that has not finished, the latest
    ``iterations.<it>.models`` checkpoint; the calibration is the ``calibration`` output, else
    the latest checkpoint. The notes say when there is no calibration, or when it was fitted
    for an earlier committee than the one returned (e.g. a run stopped between training and
    evaluation). Works on a ``TrainingWorkChain`` too (its ``models``; no calibration).

    :raises ValueError: when the run has trained no committee yet.
    """
    outputs = node.outputs
    models = (
        dict(outputs.models.items()) if 'models' in outputs else last_checkpoint(node, 'models')
    )
    if not models:
        raise ValueError(f'run <{node.pk}> has trained no committee yet')
    models = dict(models)
    calibration = outputs.calibration if 'calibration' in outputs else None
    if calibration is None:
        calibration = last_checkpoint(node, 'calibration')
    iterations = iteration_checkpoints(node).get('iterations', {})
    trained = [key for key in sorted(iterations) if 'models' in iterations[key]]
    calibrated = [key for key in sorted(iterations) if 'calibration' in iterations[key]]
    notes = []
    if calibration is None:
        notes.append(f'run <{node.pk}> has no calibration: no uncertainty')
    elif trained and calibrated and calibrated[-1] < trained[-1]:
        notes.append(
            f'run <{node.pk}>: the last calibration ({calibrated[-1]}) was fitted for an '
            f'earlier committee than the last one trained ({trained[-1]})'
        )
    return models, calibration, notes


def outstanding_failures(iterations: dict[int, dict[str, Any]], up_to: int) -> list[PESData]:
    """The frames of iterations ``<= up_to`` whose labelling failed and that no retry took.

    Candidates are each iteration's ``failed`` and ``retry_failed`` checkpoints; a retry's
    ``retried`` checkpoint was made from the failed datasets it took, so those are done.
    """
    candidates: list[PESData] = []
    taken: set[str] = set()
    for number in sorted(n for n in iterations if n <= up_to):
        checkpoints = iterations[number]
        candidates += [checkpoints[n] for n in ('failed', 'retry_failed') if n in checkpoints]
        if 'retried' in checkpoints and 'retry_summary' in checkpoints:
            creator = checkpoints['retried'].creator
            incoming = creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC)
            taken |= {node.uuid for node in incoming.all_nodes()}
    return [node for node in candidates if node.uuid not in taken and len(node)]


def iteration_key(iteration: int) -> str:
    """Output namespace of an iteration: ``iteration_01``, ``iteration_02``, ..."""
    return f'iteration_{iteration:02d}'


class TrainsPotWorkChain(ProtocolMixin, WorkChain):
    """Active learning of a committee of machine-learning potentials (see the module docstring)."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input(
            'structures',
            valid_type=PESData,
            required=False,
            help='Starting structures, augmented once (supercells, rattles, strains, ...).',
        )
        spec.input(
            'dataset',
            valid_type=PESData,
            required=False,
            help='Frames to start from (labelled or not): with `structures`, they are joined to '
            'the augmented frames; alone, augmentation is skipped. Unlabelled frames are labelled '
            'in the first iteration; a fully labelled dataset starts at training.',
        )
        spec.input_namespace(
            'models',
            valid_type=PotentialModel,
            dynamic=True,
            required=False,
            help='A trained committee: the first iteration starts at exploration (needs a '
            'fully labelled `dataset`).',
        )
        spec.input(
            'explored',
            valid_type=PESData,
            required=False,
            help='Explored frames: with `models`, the first iteration starts at evaluation.',
        )
        spec.input(
            'md_structures',
            valid_type=PESData,
            required=False,
            help='Pool of MD starting frames; default: the initial (augmented) dataset.',
        )
        spec.input(
            'restart_from',
            valid_type=orm.Str,
            required=False,
            serializer=checks.restart_reference,
            help='A previous TrainsPotWorkChain (finished, failed or killed; its node, PK or '
            'UUID, stored as the UUID): continue after its last completed stage with its '
            'iteration count, dataset, committee, calibration and history. Give the same inputs '
            '(`node.get_builder_restart()`). Its checkpoints become outputs of the new run.',
        )
        spec.input(
            'retry_failed_labels',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help="With `restart_from`: label again, with this run's labelling inputs, the frames "
            'whose labelling failed in the runs it continues (so fixed settings recover them), '
            'before the next training. False: leave them out.',
        )
        spec.input(
            'seed',
            valid_type=orm.Int,
            default=lambda: orm.Int(0),
            validator=validate_seed,
            help='Seeds all draws (an integer in [0, 2**31)).',
        )
        spec.input(
            'max_iterations',
            valid_type=orm.Int,
            default=lambda: orm.Int(10),
            help='Iterations at most (counted over restarts).',
        )
        spec.input(
            'max_labels',
            valid_type=orm.Int,
            required=False,
            help='Label budget: stop before labelling a selection that would exceed it (frames '
            'sent to labelling over the whole campaign, the initial ones included).',
        )
        spec.input(
            'max_selected',
            valid_type=orm.Int,
            default=lambda: orm.Int(1000),
            help='Frames selected for labelling per iteration at most (paper: 1000).',
        )
        spec.input(
            'warm_start',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='Start each member from its previous version (False: train from scratch).',
        )
        spec.input(
            'error_thresholds',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({'energy': 1e-3, 'forces': 0.1, 'stress': 1e-3}),
            help='Error tolerances ε_thr: eV/atom, eV/Å, eV/Å³ (paper: 1 meV/atom, 0.1 eV/Å, '
            '1 meV/Å³).',
        )
        spec.input(
            'calibration',
            valid_type=orm.Dict,
            default=lambda: orm.Dict(CalibrationSettings(splits=HELD_OUT_SPLITS).to_dict()),
            help='Calibration settings (CalibrationSettings): method (least_squares, '
            'median_ratio, huber), min_points, splits (the held-out splits fitted on; all '
            'labelled frames while too few), power_law, error (committee_mean: the '
            "mean's error, the default; members: each member's RMS error).",
        )
        spec.input(
            'selection',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            help='Selection settings (min_displacement, min_distance, max_force, '
            'max_force_disagreement, force_disagreement_factor, strategy: paper or '
            'disagreement, or cap_order: random or disagreement, the same choice); '
            'max_selected is its own input.',
        )
        spec.expose_inputs(
            DatasetAugmentationWorkChain,
            namespace='augmentation',
            exclude=('structures', 'seed'),
            namespace_options={'required': False, 'populate_defaults': False},
        )
        spec.expose_inputs(
            AbInitioLabellingWorkChain,
            namespace='labelling',
            exclude=('dataset',),
            namespace_options={'required': False, 'populate_defaults': False},
        )
        spec.expose_inputs(
            TrainingWorkChain, namespace='training', exclude=('dataset', 'seed', 'previous_models')
        )
        spec.expose_inputs(
            ExplorationWorkChain,
            namespace='exploration',
            exclude=('structures', 'model', 'models', 'seed'),
        )
        spec.expose_inputs(
            EvaluationCalculation,
            namespace='evaluation',
            exclude=('models', 'datasets', 'calibration'),
        )
        spec.inputs.validator = checks.validate_inputs

        spec.outline(
            cls.setup,
            if_(cls.should_augment)(cls.run_augmentation, cls.inspect_augmentation),
            cls.prepare_initial_dataset,
            while_(cls.should_iterate)(
                if_(cls.should_label)(cls.run_labelling, cls.inspect_labelling),
                if_(cls.should_retry)(cls.run_retry, cls.inspect_retry),
                if_(cls.should_train)(cls.run_training, cls.inspect_training),
                if_(cls.should_explore)(cls.run_exploration, cls.inspect_exploration),
                cls.run_evaluation,
                cls.inspect_evaluation,
            ),
            cls.results,
        )

        spec.output('dataset', valid_type=PESData, help='Every labelled frame, with its split.')
        spec.output_namespace(
            'models', valid_type=PotentialModel, dynamic=True, help='The final committee.'
        )
        spec.output(
            'calibration', valid_type=orm.Dict, required=False, help='The last calibration.'
        )
        spec.output(
            'pending',
            valid_type=PESData,
            required=False,
            help='Frames selected by the last iteration and not labelled (limit reached).',
        )
        spec.output(
            'initial_dataset', valid_type=PESData, help='The augmented/input frames before labels.'
        )
        spec.output('summary', valid_type=orm.Dict, help='Stop reason, iterations, labels used.')
        spec.output(
            'dft_settings',
            valid_type=orm.Dict,
            required=False,
            help='The labelling settings of every frame of the campaign (qe engine: the DFT '
            'settings), decided once from every species it can contain (a restart reuses them).',
        )
        spec.output_namespace(
            'iterations',
            dynamic=True,
            help='Per iteration (iteration_<NN>): labelled, failed, dataset, models, explored, '
            'predictions, calibration, diagnostics, selected, record and the stage summaries, '
            'each emitted when its stage ends; retried, retry_dataset, retry_failed and '
            'retry_summary when a restart labelled failed frames again.',
        )
        spec.exit_code(401, 'ERROR_AUGMENTATION_FAILED', message='Augmentation failed: {detail}')
        spec.exit_code(402, 'ERROR_LABELLING_FAILED', message='Labelling failed: {detail}')
        spec.exit_code(403, 'ERROR_TRAINING_FAILED', message='Training failed: {detail}')
        spec.exit_code(404, 'ERROR_EXPLORATION_FAILED', message='Exploration failed: {detail}')
        spec.exit_code(405, 'ERROR_EVALUATION_FAILED', message='Evaluation failed: {detail}')
        spec.exit_code(406, 'ERROR_CALIBRATION_FAILED', message='Calibration failed: {detail}')
        spec.exit_code(
            407,
            'ERROR_NO_SELECTABLE_FRAMES',
            message='{n_candidates} explored frames exceed the thresholds but every one was '
            'rejected as unphysical: nothing to label.',
        )
        spec.exit_code(
            408,
            'ERROR_NO_LABELLED_FRAMES',
            message='No frame could be labelled: nothing to train on.',
        )

    # ------------------------------------------------------------------ protocols

    @classmethod
    def get_protocol_filepath(cls):
        """The YAML file of the protocols (fast, moderate, precise)."""
        from importlib.resources import files

        return files('aiida_trainspot.protocols') / 'trainspot.yaml'

    @classmethod
    def get_builder_from_protocol(cls, codes, structures, protocol=None, overrides=None, **kwargs):
        """A builder from a protocol, the codes and the structures (see :mod:`.protocols`)."""
        from .protocols import builder_from_protocol

        return builder_from_protocol(cls, codes, structures, protocol, overrides, **kwargs)

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """Initialise the loop state, or take it from the run given in ``restart_from``."""
        ctx = self.ctx
        ctx.iteration = 1
        ctx.stage = 'labelling'
        ctx.dataset = None  # every labelled frame so far
        ctx.to_label = None  # frames the next labelling takes
        ctx.models = dict(self.inputs.get('models', {}))
        ctx.explored = self.inputs.get('explored')
        ctx.calibration = None
        ctx.initial = None
        ctx.n_labels = 0
        ctx.stop_reason = None
        ctx.pending = None
        ctx.summaries = {}
        ctx.dft_settings = None
        if ctx.models:
            ctx.stage = 'evaluation' if ctx.explored is not None else 'exploration'
        if 'restart_from' in self.inputs:
            return self._resume(orm.load_node(self.inputs.restart_from.value))
        return None

    def _resume(self, node: orm.WorkflowNode):
        """Carry the iteration count, datasets, committee, calibration and history of ``node``."""
        outputs = iteration_checkpoints(node)
        if 'initial_dataset' not in outputs:
            self.report(f'restart: {node.pk} emitted no initial dataset; starting afresh')
            return None
        self.ctx.initial = outputs['initial_dataset']
        self.ctx.dft_settings = outputs.get('dft_settings')
        iterations = {
            int(key.rsplit('_', 1)[1]): value
            for key, value in outputs.get('iterations', {}).items()
        }
        converged = any(
            it.get('record') is not None and it['record'].get('stop_reason') == 'converged'
            for it in iterations.values()
        )
        point = resume_point({k: set(v) for k, v in iterations.items()}, converged)
        for number in sorted(iterations):
            if number <= point.iteration:
                self._emit_iteration(number, dict(iterations[number]))
        self.ctx.iteration, self.ctx.stage = point.iteration, point.stage
        current = iterations.get(point.iteration, {})
        source = iterations.get(point.from_iteration, {})
        previous = iterations.get(point.iteration - 1, {})
        if 'record' in previous:
            self.ctx.n_labels = previous['record']['n_labels_total']
            self.ctx.calibration = previous.get('calibration')
        if point.stage == 'done':
            record = source['record']
            self.ctx.n_labels = record['n_labels_total']
            self.ctx.stop_reason = record.get('stop_reason')
        if point.stage == 'labelling':
            if point.from_iteration == 0:
                self.ctx.to_label = None  # prepare_initial_dataset finds the unlabelled frames
            else:
                self.ctx.to_label = source.get('selected')
            self.ctx.dataset = source.get('dataset')
            self.ctx.models = dict(source.get('models', {}))
        else:
            names = [n for n in ('dataset', 'retry_dataset', 'labelled') if n in current]
            self.ctx.dataset = current[names[0]] if names else None
            self.ctx.models = dict(
                current.get('models') or previous.get('models') or self.inputs.get('models', {})
            )
            self.ctx.explored = current.get('explored')
            for name in ('labelling_summary', 'retry_summary'):
                if name in current:
                    self.ctx.n_labels += current[name]['n_frames']
        if point.stage == 'done' or 'calibration' in current:
            self.ctx.calibration = current.get('calibration', source.get('calibration'))
        self.ctx.resumed = True
        if self.inputs.retry_failed_labels.value and point.stage != 'done':
            # an iteration that already has a retry's checkpoints defers a new one to the next
            self.ctx.retried_in = {n for n, it in iterations.items() if 'retry_summary' in it}
            failed = outstanding_failures(iterations, point.iteration)
            self.ctx.to_retry = failed or None
        self.report(
            f'restart from {node.pk}: iteration {point.iteration}, continuing at {point.stage}'
        )
        return None

    def should_augment(self) -> bool:
        """Augment when structures are given and no initial dataset exists yet."""
        return 'structures' in self.inputs and self.ctx.initial is None

    def run_augmentation(self):
        """Augment the starting structures (once)."""
        inputs = AttributeDict(self.exposed_inputs(DatasetAugmentationWorkChain, 'augmentation'))
        inputs.structures = self.inputs.structures
        inputs.seed = orm.Int(stage_seed(self.inputs.seed.value, 0, 'augmentation'))
        inputs.metadata = {'call_link_label': 'augmentation'}
        return ToContext(augmentation=self.submit(DatasetAugmentationWorkChain, **inputs))

    def inspect_augmentation(self):
        """Take the augmented frames."""
        node = self.ctx.augmentation
        if not node.is_finished_ok:
            return self._fail(
                self.exit_codes.ERROR_AUGMENTATION_FAILED.format(detail=_failure_detail(node))
            )
        self.ctx.augmented = node.outputs.dataset
        self.report(f'augmentation: {len(node.outputs.dataset)} frames')
        return None

    def prepare_initial_dataset(self) -> None:
        """The initial dataset; its labelled frames start the dataset, the rest is to label."""
        if self.ctx.initial is None:
            candidates = (self.inputs.get('dataset'), self.ctx.get('augmented'))
            parts = [p for p in candidates if p is not None]
            if len(parts) == 1:
                self.ctx.initial = parts[0]
            else:
                self.ctx.initial = join_datasets(
                    part_0=parts[0], part_1=parts[1], metadata={'call_link_label': 'initial'}
                )
        self.out('initial_dataset', self.ctx.initial)
        self._decide_dft_settings()
        first = self.ctx.iteration == 1 and self.ctx.stage == 'labelling'
        if self.ctx.get('resumed') and not first and self.ctx.dataset is not None:
            return
        partition = partition_by_labels(
            self.ctx.initial, metadata={'call_link_label': 'partition_initial'}
        )
        if len(partition['labelled']) and (first or self.ctx.dataset is None):
            self.ctx.dataset = partition['labelled']
        if len(partition['unlabelled']) and first:
            self.ctx.to_label = partition['unlabelled']
        self.report(
            f'initial dataset: {len(self.ctx.initial)} frames, '
            f'{len(partition["labelled"])} labelled'
        )

    def _labelling_engine(self) -> tuple[str, Any]:
        """The name and class of the labelling engine of this campaign."""
        labelling = self.inputs.get('labelling', {})
        name = labelling['engine'].value if 'engine' in labelling else DEFAULT_LABELLING_ENGINE
        return name, engine_class(LABELLING_ENGINES, name)

    def _decide_dft_settings(self) -> None:
        """One set of labelling settings for the whole campaign, from every species it can contain.

        The labelling engine decides them (:meth:`.LabellingEngine.campaign_settings`; the qe
        engine: given as ``labelling.qe.dft_settings``, restored from ``restart_from``, or decided
        here from the initial frames and the MD starting pool), so that later iterations, whose
        frames come from MD, are computed exactly like the first.
        """
        name, engine = self._labelling_engine()
        inputs = self.inputs.get('labelling', {}).get(name) or {}
        species = set(self.ctx.initial.species) | set(checks.campaign_species(self.inputs))
        self.ctx.dft_settings = engine.campaign_settings(inputs, species, self.ctx.dft_settings)
        if self.ctx.dft_settings is None:
            return
        self.out('dft_settings', self.ctx.dft_settings)
        self.report(engine.describe_settings(self.ctx.dft_settings))

    # ------------------------------------------------------------------ the loop

    def should_iterate(self) -> bool:
        """Go on while the last iteration asked for another one."""
        return self.ctx.stop_reason is None and self.ctx.stage != 'done'

    def _stage_is_due(self, stage: str) -> bool:
        return STAGES.index(self.ctx.stage) <= STAGES.index(stage)

    def should_label(self) -> bool:
        """Label when this iteration starts at labelling and there are frames to label."""
        due = self._stage_is_due('labelling') and self.ctx.to_label is not None
        return due and len(self.ctx.to_label) > 0

    def _submit_labelling(self, dataset: PESData, stage: str):
        """Label ``dataset`` with this run's labelling inputs and the campaign's DFT settings."""
        inputs = AttributeDict(self.exposed_inputs(AbInitioLabellingWorkChain, 'labelling'))
        inputs.dataset = dataset
        if self.ctx.dft_settings is not None:
            name, engine = self._labelling_engine()
            inputs[name] = engine.with_campaign_settings(
                dict(inputs.get(name) or {}), self.ctx.dft_settings
            )
        inputs.metadata = {'call_link_label': f'{iteration_key(self.ctx.iteration)}_{stage}'}
        return ToContext(**{stage: self.submit(AbInitioLabellingWorkChain, **inputs)})

    def _add_labelled(self, labelled: PESData, link: str) -> None:
        """The dataset with ``labelled`` appended (a calcfunction when both hold frames)."""
        parts = [p for p in (self.ctx.dataset, labelled) if p is not None and len(p)]
        if len(parts) == 2:
            label = f'{iteration_key(self.ctx.iteration)}_{link}'
            parts = [
                join_datasets(part_0=parts[0], part_1=parts[1], metadata={'call_link_label': label})
            ]
        self.ctx.dataset = parts[0] if parts else None

    def _take_labels(self, node: orm.WorkflowNode, link: str) -> dict[str, Any] | None:
        """Count the frames a labelling was sent, add what it labelled; None: it gave nothing."""
        if 'labelled' not in node.outputs:
            return None
        summary = node.outputs.summary.get_dict()
        self.ctx.n_labels += summary['n_frames']
        self._add_labelled(node.outputs.labelled, link)
        return summary

    def run_labelling(self):
        """Label the unlabelled initial frames, or the previous iteration's selection."""
        return self._submit_labelling(self.ctx.to_label, 'labelling')

    def inspect_labelling(self):
        """Add the labelled frames to the dataset; report the failed ones."""
        node = self.ctx.labelling
        outputs = node.outputs
        summary = self._take_labels(node, 'merge')
        if summary is None:
            return self._fail(
                self.exit_codes.ERROR_LABELLING_FAILED.format(detail=_failure_detail(node))
            )
        if self.ctx.dataset is None:
            return self._fail(self.exit_codes.ERROR_NO_LABELLED_FRAMES)
        self.ctx.to_label = None
        self._checkpoint(
            labelled=self.ctx.dataset,
            failed=outputs.failed,
            labelling_summary=outputs.summary,
        )
        self.ctx.summaries['labelling'] = outputs.summary
        self.report(
            f'iteration {self.ctx.iteration} labelling: {summary["n_labelled"]} labelled, '
            f'{summary["n_failed"]} failed; dataset {len(self.ctx.dataset)} frames'
        )
        if not node.is_finished_ok:
            return self._fail(
                self.exit_codes.ERROR_LABELLING_FAILED.format(detail=_failure_detail(node))
            )
        return None

    def should_retry(self) -> bool:
        """Label again, once, the frames that failed in the runs this one continues."""
        retry = self.ctx.get('to_retry')
        return (
            retry is not None
            and self._stage_is_due('training')
            and self.ctx.iteration not in self.ctx.get('retried_in', set())
        )

    def run_retry(self):
        """Label the failed frames with this run's labelling inputs (the user's fix)."""
        key = iteration_key(self.ctx.iteration)
        parts = {f'part_{k}': part for k, part in enumerate(self.ctx.to_retry)}
        self.ctx.retried = frames_to_retry(**parts, metadata={'call_link_label': f'{key}_retried'})
        self.ctx.to_retry = None
        self.report(
            f'iteration {self.ctx.iteration}: labelling again the {len(self.ctx.retried)} frames '
            'whose labelling failed before the restart'
        )
        return self._submit_labelling(self.ctx.retried, 'relabelling')

    def inspect_retry(self):
        """Add what the retry labelled; frames that fail again are recorded, not fatal."""
        node = self.ctx.relabelling
        outputs = node.outputs
        summary = self._take_labels(node, 'retry_merge')
        if summary is None:
            return self._fail(
                self.exit_codes.ERROR_LABELLING_FAILED.format(detail=_failure_detail(node))
            )
        self._checkpoint(
            retried=self.ctx.retried,
            retry_dataset=self.ctx.dataset,
            retry_failed=outputs.failed,
            retry_summary=outputs.summary,
        )
        self.report(
            f'iteration {self.ctx.iteration} retry: {summary["n_labelled"]} of '
            f'{summary["n_frames"]} failed frames labelled, {summary["n_failed"]} failed again; '
            f'dataset {len(self.ctx.dataset) if self.ctx.dataset is not None else 0} frames'
        )
        return None

    def should_train(self) -> bool:
        """Train unless this iteration starts later (given or resumed committee)."""
        return self._stage_is_due('training')

    def run_training(self):
        """Train the committee on every labelled frame (warm start from the previous one)."""
        if self.ctx.dataset is None or not labelled_mask(self.ctx.dataset).any():
            return self._fail(self.exit_codes.ERROR_NO_LABELLED_FRAMES)
        inputs = AttributeDict(self.exposed_inputs(TrainingWorkChain, 'training'))
        inputs.dataset = self.ctx.dataset
        inputs.seed = orm.Int(stage_seed(self.inputs.seed.value, self.ctx.iteration, 'training'))
        if self.inputs.warm_start.value and self.ctx.models:
            inputs.previous_models = dict(self.ctx.models)
        inputs.metadata = {'call_link_label': f'{iteration_key(self.ctx.iteration)}_training'}
        return ToContext(training=self.submit(TrainingWorkChain, **inputs))

    def inspect_training(self):
        """Take the committee and the dataset with its sticky split."""
        node = self.ctx.training
        if not node.is_finished_ok:
            return self._fail(
                self.exit_codes.ERROR_TRAINING_FAILED.format(detail=_failure_detail(node))
            )
        self.ctx.dataset = node.outputs.dataset
        self.ctx.models = dict(node.outputs.models)
        self.ctx.summaries['training'] = node.outputs.report
        self._checkpoint(
            dataset=self.ctx.dataset, models=self.ctx.models, training_report=node.outputs.report
        )
        self.report(
            f'iteration {self.ctx.iteration} training: {len(self.ctx.models)} members on '
            f'{len(self.ctx.dataset)} frames'
        )
        return None

    def should_explore(self) -> bool:
        """Explore unless explored frames were given (first iteration) or resumed."""
        return self._stage_is_due('exploration')

    def run_exploration(self):
        """MD with one member drawn at random, from the pool of starting frames."""
        inputs = AttributeDict(self.exposed_inputs(ExplorationWorkChain, 'exploration'))
        inputs.structures = self.inputs.get('md_structures', self.ctx.initial)
        inputs.models = dict(self.ctx.models)
        inputs.seed = orm.Int(stage_seed(self.inputs.seed.value, self.ctx.iteration, 'exploration'))
        inputs.metadata = {'call_link_label': f'{iteration_key(self.ctx.iteration)}_exploration'}
        return ToContext(exploration=self.submit(ExplorationWorkChain, **inputs))

    def inspect_exploration(self):
        """Take the sampled frames."""
        node = self.ctx.exploration
        if not node.is_finished_ok:
            return self._fail(
                self.exit_codes.ERROR_EXPLORATION_FAILED.format(detail=_failure_detail(node))
            )
        self.ctx.explored = node.outputs.trajectory
        self.ctx.summaries['exploration'] = node.outputs.summary
        self._checkpoint(explored=self.ctx.explored, exploration_summary=node.outputs.summary)
        self.report(f'iteration {self.ctx.iteration} exploration: {len(self.ctx.explored)} frames')
        return None

    def run_evaluation(self):
        """Predict the explored and the labelled frames with the whole committee, in one job."""
        inputs = AttributeDict(self.exposed_inputs(EvaluationCalculation, 'evaluation'))
        inputs.models = dict(self.ctx.models)
        inputs.datasets = {'explored': self.ctx.explored, 'labelled': self.ctx.dataset}
        inputs.metadata = dict(inputs.get('metadata', {}))
        inputs.metadata['call_link_label'] = f'{iteration_key(self.ctx.iteration)}_evaluation'
        return ToContext(evaluation=self.submit(EvaluationCalculation, **inputs))

    def inspect_evaluation(self):
        """Calibrate on the labelled frames, select among the explored ones, record, decide."""
        node = self.ctx.evaluation
        if not node.is_finished_ok:
            return self._fail(
                self.exit_codes.ERROR_EVALUATION_FAILED.format(detail=_failure_detail(node))
            )
        key = iteration_key(self.ctx.iteration)
        predictions = node.outputs.predictions
        calibration_inputs = {
            'predictions': predictions.labelled,
            'error_thresholds': self.inputs.error_thresholds,
            'settings': self.inputs.calibration,
            'metadata': {'call_link_label': f'{key}_calibration'},
        }
        if self.ctx.calibration is not None:
            calibration_inputs['previous'] = self.ctx.calibration
        try:
            calibrated = calibrate_committee(**calibration_inputs)
        except ValueError as exception:
            return self._fail(self.exit_codes.ERROR_CALIBRATION_FAILED.format(detail=exception))
        self.ctx.calibration = calibrated['calibration']
        settings = {
            **self.inputs.selection.get_dict(),
            'max_selected': self.inputs.max_selected.value,
        }
        selection = select_for_labelling(
            predictions.explored,
            calibrated['calibration'],
            orm.Dict(settings),
            orm.Int(stage_seed(self.inputs.seed.value, self.ctx.iteration, 'selection')),
            metadata={'call_link_label': f'{key}_selection'},
        )
        counts = selection['report']['counts']
        decision = decide(
            iteration=self.ctx.iteration,
            max_iterations=self.inputs.max_iterations.value,
            n_candidates=counts['candidates'],
            n_selected=counts['selected'],
            n_labels=self.ctx.n_labels,
            max_labels=self.inputs.max_labels.value if 'max_labels' in self.inputs else None,
        )
        selected = None
        if counts['selected']:
            selected = prepare_selection(
                selection['selected'],
                orm.Int(self.ctx.iteration),
                metadata={'call_link_label': f'{key}_prepare_selection'},
            )
        record = record_iteration(
            orm.Int(self.ctx.iteration),
            orm.Int(self.ctx.n_labels),
            self.ctx.dataset,
            node.outputs.metrics,
            calibrated['calibration'],
            calibrated['diagnostics'],
            selection['report'],
            orm.Str(decision.stop_reason or ''),
            metadata={'call_link_label': f'{key}_record'},
            **{k: v for k, v in self.ctx.summaries.items()},
        )
        checkpoint = {
            'predictions': dict(predictions),
            'metrics': node.outputs.metrics,
            'calibration': calibrated['calibration'],
            'diagnostics': calibrated['diagnostics'],
            'selection_report': selection['report'],
            'record': record,
        }
        if selected is not None:
            checkpoint['selected'] = selected
        self.report(self._iteration_line(record.get_dict()))
        if decision.failure:
            # No checkpoint: a restart with other selection settings evaluates this iteration again.
            return self._fail(
                self.exit_codes.ERROR_NO_SELECTABLE_FRAMES.format(n_candidates=counts['candidates'])
            )
        self._checkpoint(**checkpoint)
        self.ctx.summaries = {}
        self._drop_broken_members(node.outputs.metrics.get_dict())
        if decision.goes_on:
            self.ctx.iteration += 1
            self.ctx.stage = 'labelling'
            self.ctx.to_label = selected
            self.ctx.explored = None
        else:
            self.ctx.stop_reason = decision.stop_reason
            self.ctx.pending = selected if decision.stop_reason != 'converged' else None
        return None

    def _drop_broken_members(self, metrics: dict[str, Any]) -> None:
        """Members the evaluation found non-finite on every frame leave the committee.

        The next training starts them from scratch (no warm start from a broken model), and
        exploration no longer draws them.
        """
        dropped = [m for m in metrics.get('dropped_members', []) if m in self.ctx.models]
        for label in dropped:
            del self.ctx.models[label]
        flagged = sum(len(v) for v in metrics.get('non_finite_frames', {}).values())
        if dropped or flagged:
            self.report(
                f'iteration {self.ctx.iteration}: {flagged} frames with a non-finite prediction; '
                f'members dropped as non-finite everywhere: {dropped or "none"}'
            )

    def _iteration_line(self, record: dict[str, Any]) -> str:
        validation = record['rmse'].get('validation', {})
        forces = validation.get('forces', {}).get('committee')
        energy = validation.get('energy', {}).get('committee')
        selection = record['selection']
        text = (
            f'iteration {record["iteration"]}: {record["dataset"]["n_frames"]} labelled frames, '
            f'validation RMSE E {_fmt(energy)} meV/atom F {_fmt(forces)} meV/Å; '
            f'{selection["candidates"]} of {selection["frames"]} explored frames above τ, '
            f'{selection["selected"]} selected'
        )
        if record['stop_reason']:
            text += f'; stop: {record["stop_reason"]}'
        return text

    # ------------------------------------------------------------------ outputs

    def _checkpoint(self, **nodes: Any) -> None:
        """Emit stage outputs under ``iterations.iteration_<NN>`` as soon as a stage ends."""
        self._emit_iteration(self.ctx.iteration, nodes)

    def _emit_iteration(self, iteration: int, nodes: dict[str, Any]) -> None:
        key = iteration_key(iteration)
        for name, value in nodes.items():
            if isinstance(value, dict):
                for label, node in value.items():
                    self.out(f'iterations.{key}.{name}.{label}', node)
            elif value is not None:
                self.out(f'iterations.{key}.{name}', value)

    def _emit_final(self) -> None:
        if self.ctx.dataset is not None:
            self.out('dataset', self.ctx.dataset)
        if self.ctx.models:
            self.out('models', dict(self.ctx.models))
        if self.ctx.calibration is not None:
            self.out('calibration', self.ctx.calibration)
        pending = self.ctx.get('pending') or self.ctx.get('to_label')
        if pending is not None and len(pending):
            self.out('pending', pending)

    def _summary(self, status: str) -> None:
        self.out(
            'summary',
            summarise_campaign(
                orm.Str(status),
                orm.Str(self.ctx.stop_reason or ''),
                orm.Int(self.ctx.iteration),
                orm.Int(self.ctx.n_labels),
                metadata={'call_link_label': 'summary'},
                **({'dataset': self.ctx.dataset} if self.ctx.dataset is not None else {}),
            ),
        )

    def _fail(self, exit_code):
        """Emit what exists (dataset, committee, selection) before stopping with ``exit_code``."""
        self._emit_final()
        self._summary(f'failed: {exit_code.status}')
        return exit_code

    def results(self) -> None:
        """The final dataset, committee, calibration, pending selection and summary."""
        self._emit_final()
        self._summary('finished')
        self.report(
            f'finished after {self.ctx.iteration} iterations ({self.ctx.stop_reason}): '
            f'{len(self.ctx.dataset) if self.ctx.dataset is not None else 0} labelled frames, '
            f'{len(self.ctx.models)} members'
        )


def _failure_detail(node: orm.ProcessNode) -> str:
    """What went wrong in a stage: its process, state or exit status, and its exit message."""
    if node.is_excepted:
        lines = (node.exception or '').strip().splitlines()
        what = f'excepted: {lines[-1]}' if lines else 'excepted'
    elif node.is_killed:
        what = 'killed'
    else:
        what = f'exit {node.exit_status}: {node.exit_message or "no message"}'
    return f'{node.process_label}<{node.pk}> {what}'


def _fmt(value: float | None) -> str:
    return 'n/a' if value is None else f'{value:.1f}'
