"""One experiment (a dataset and a model) as every pipeline stage sees it, built once per run: the
``Experiment`` object (over the folder and naming rules of medseg.paths) and how a training budget
is split over the runs. Kept apart from the stages (medseg.pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegError
from medseg.paths import DEFAULT_PLANS_NAME, configuration_model_folder, default_plans_name, plans_path, preprocessed_folder


@dataclass
class TrainingBudget:
    """How training minutes are shared: a total for the whole run, shared by the runs
    (configuration x fold) still to train, their final validations included, or the same
    training minutes for every run, resumed or not (what compare gives each family)."""

    total_minutes: float | None = None
    per_run_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.total_minutes is not None and self.per_run_minutes is not None:
            raise MedsegError("give --time-budget (total) or --time-budget-per-run, not both")

    def run_minutes(self, remaining_runs: int, spent_minutes: float = 0.0, run_overhead_minutes: float = 0.0) -> float | None:
        """One run's training minutes when ``remaining_runs`` are still to train (None: no time
        budget). A total covers the whole run (fingerprint, plans, preprocessing, the final
        validations): ``spent_minutes`` since the run started are taken off, and each run's
        training stops ``run_overhead_minutes`` (what a finished run took beyond its training
        minutes) early, so the run ends near the total; a run never gets less than a quarter of
        an even split of what is left (or 1% of the total, once it is spent)."""
        if self.per_run_minutes is not None:
            return self.per_run_minutes
        if not self.total_minutes:
            return None
        runs = max(remaining_runs, 1)
        left = max(self.total_minutes - spent_minutes, 0.0)
        return max(left / runs - run_overhead_minutes, left / runs / 4, self.total_minutes / 100)

    def planned_run_seconds(self, planned_runs: int) -> float | None:
        """One run's seconds as the planner sizes for them, before any run has trained."""
        minutes = self.run_minutes(planned_runs)
        return minutes * 60 if minutes else None


class Experiment:
    """One dataset and one model as every stage of a run sees them, built once and handed to each
    stage: the dataset description (dataset.json parsed once), the model spec and the task that
    trains it, the plans name, the plans (read or made once) and the model folder of each
    configuration (written once)."""

    def __init__(self, raw_folder: Path, description, spec, task, plans_name: str, plans=None, case_analyses: dict | None = None):
        self.raw_folder, self.description, self.spec, self.task = Path(raw_folder), description, spec, task
        self.plans_name, self._plans = plans_name, plans
        self.case_analyses = case_analyses  # what the dataset check found per case, for the fingerprint
        self._model_folders: dict[str, object] = {}

    @classmethod
    def open(cls, raw_folder: Path, model: str = "unet", plans_name: str | None = None, description=None, check=None) -> Experiment:
        """The experiment of ``model`` (a family or a model spec) on the dataset. ``check``: the
        dataset check's report (medseg.data.check.CheckReport), whose parsed dataset.json and case
        analyses the run keeps; or ``description``: dataset.json already parsed; else parsed here.
        A family whose task does not learn from the dataset's layout is refused before any work."""
        from medseg.data.layout import load_dataset_description
        from medseg.models.spec import parse_model_spec
        from medseg.tasks.registry import task_for_model

        raw_folder = Path(raw_folder)
        description = description or (check.description if check is not None else None) or load_dataset_description(raw_folder)
        spec = parse_model_spec(model)
        task = task_for_model(spec.family, description.task_type, raw_folder.name)
        analyses = check.analyses if check is not None else None
        return cls(raw_folder, description, spec, task, plans_name or default_plans_name(model), case_analyses=analyses)

    @classmethod
    def from_plans(cls, raw_folder: Path, plans_name: str = DEFAULT_PLANS_NAME) -> Experiment:
        """The experiment a plans file was made for (``preprocess`` and ``train`` name plans, not a model)."""
        from medseg.data.layout import load_dataset_description
        from medseg.models.spec import ModelSpec
        from medseg.planning.plans import Plans
        from medseg.tasks.registry import task_for_model

        raw_folder = Path(raw_folder)
        description = load_dataset_description(raw_folder)
        plans = Plans.load(plans_path(raw_folder, plans_name))
        families = {c.architecture["name"] for c in plans.configurations.values()}
        if len(families) != 1:
            raise MedsegError(f"plans {plans.plans_name} of {plans.dataset_name} mix model families ({', '.join(sorted(families))})")
        spec = ModelSpec(families.pop(), dict(plans.planner.get("model_options", {})))
        task = task_for_model(spec.family, description.task_type, raw_folder.name)
        return cls(raw_folder, description, spec, task, plans_name, plans)

    # ------------------------------------------------------------------------------------ files
    @property
    def preprocessed_folder(self) -> Path:
        return preprocessed_folder(self.raw_folder)

    @property
    def fingerprint_file(self) -> Path:
        return self.preprocessed_folder / "fingerprint.json"

    @property
    def plans_file(self) -> Path:
        return plans_path(self.raw_folder, self.plans_name)

    def data_folder(self, configuration: str) -> Path:
        return self.preprocessed_folder / self.plans.configuration(configuration).data_identifier

    def model_folder_path(self, configuration: str) -> Path:
        return configuration_model_folder(self.raw_folder, self.plans, configuration)

    # ------------------------------------------------------------------------------------ plans
    @property
    def plans(self):
        """The plans, read from the plans file the first time they are needed."""
        if self._plans is None:
            from medseg.planning.plans import Plans

            self._plans = Plans.load(self.plans_file)
        return self._plans

    @plans.setter
    def plans(self, plans) -> None:
        self._plans = plans
        self._model_folders.clear()

    def _write_input_profile(self, folder, plan) -> None:
        """What the training images looked like (medseg.audit.input_profile), for checking inputs."""
        from medseg.audit.input_profile import profile_from_fingerprint, write_profile
        from medseg.planning.fingerprint import Fingerprint

        if self.fingerprint_file.is_file():
            normalization = [channel.get("scheme") for channel in plan.normalization]
            write_profile(folder.path, profile_from_fingerprint(Fingerprint.load(self.fingerprint_file), normalization))

    def model_folder(self, configuration: str):
        """The configuration's model folder, made self-describing (plans, dataset.json, model.json)
        the first time a stage asks for it; it keeps the plans in memory."""
        from medseg.model_folder import ModelFolder, ModelInfo

        if configuration not in self._model_folders:
            plan = self.plans.configuration(configuration)
            info = ModelInfo(
                configuration=configuration, model=plan.architecture["name"], dataset_name=self.raw_folder.name,
                raw_folder=str(self.raw_folder), preprocessed_folder=str(self.data_folder(configuration)),
                file_ending=self.description.file_ending, labels={name: int(value) for name, value in self.description.labels.items()},
                task=self.task.name, **self.task.model_info(plan),
            )
            folder = ModelFolder.create(self.model_folder_path(configuration), self.plans, self.raw_folder / "dataset.json", info)
            folder.plans = self.plans  # kept, not read back
            self._write_input_profile(folder, plan)
            self._model_folders[configuration] = folder
        return self._model_folders[configuration]
