"""Typed run configuration: one pydantic model per stage, composed into `RunConfig`.

Every field carries a one-line description; `--help`, the JSON schema and `--print-config` all
come from these. `extra="forbid"` everywhere so a typo in a recipe is an error, not a silently
ignored key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunewright.errors import ConfigError

InputFormat = Literal[
    "auto",
    "messages",
    "prompt_completion",
    "alpaca",
    "sharegpt",
    "text",
    "text_label",
    "preference",  # TRL prompt/chosen/rejected: strings or message lists
    "chosen_rejected",  # Anthropic-HH full chats; the shared leading messages are the prompt
    "openai_preference",  # OpenAI DPO JSONL: input.messages, preferred_output, non_preferred_output
]
# The value lists below are defined here once; the data stage reads them from here.
CleanStep = Literal["unicode", "control", "whitespace", "html", "urls"]
PiiType = Literal["EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE"]
LabelWeighting = Literal["none", "balanced", "sqrt"]
Truncation = Literal["none", "input_end", "input_start", "input_middle"]
_PII_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def compile_pii_pattern(name: str, regex: str) -> re.Pattern:
    """A user's extra PII pattern (`data.pii_patterns`), checked: a placeholder name of letters,
    digits and _, not a built-in type, and a valid regex that cannot match the empty string."""
    builtin = get_args(PiiType)
    if not _PII_NAME.fullmatch(name) or name in builtin:
        raise ValueError(
            f"extra_patterns: bad name {name!r}; use letters, digits and _ (starting with a "
            f"letter), and not a built-in type ({', '.join(builtin)})"
        )
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise ValueError(f"extra_patterns[{name!r}]: invalid regex {regex!r}: {err}") from err
    if pattern.search("") is not None:
        raise ValueError(
            f"extra_patterns[{name!r}]: regex {regex!r} matches the empty string, so it would "
            "match everywhere; make it require at least one character"
        )
    return pattern


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field(
        "smollm2-135m",
        description="Base model: 'smollm2-135m' (bundled), a local HF folder, a .gguf file or a Hub id.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the model folder/Hub to run (off: safer)."
    )


class DataConfig(_Strict):
    train_files: list[str] = Field(
        default_factory=list, description="Training data files (paths relative to the recipe)."
    )
    test_files: list[str] = Field(
        default_factory=list,
        description="Held-out test files; if empty, a test split is cut from the training data.",
    )
    format: InputFormat = Field("auto", description="Input format; 'auto' detects it per file.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map canonical fields (text, label, prompt, completion, ...) to your column names.",
    )
    system_prompt: str | None = Field(
        None, description="Instruction put first in every chat; short prompts train faster."
    )
    max_train_examples: int | None = Field(
        None, ge=1, description="Use at most this many training examples (seeded sample)."
    )
    val_fraction: float = Field(
        0.05, ge=0.0, lt=0.5, description="Share of training rows held out for validation loss."
    )
    test_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="Share cut for testing when no test_files are given."
    )
    max_test_examples: int | None = Field(
        None, ge=1, description="Evaluate on at most this many test examples (seeded sample)."
    )
    max_seq_len: int = Field(512, ge=8, description="Longest tokenised example, in tokens.")
    truncate: Truncation = Field(
        "none",
        description="Chats over max_seq_len: 'none' quarantines them; input_end, input_start or input_middle cuts that part of the user text to fit.",
    )
    seed: int = Field(0, description="Seed for sampling and splitting.")
    clean: list[CleanStep] = Field(
        default_factory=lambda: ["unicode", "control", "whitespace"],
        description="Cleaning steps: unicode (NFC), control (characters), whitespace, html (tags, entities), urls (to [URL]).",
    )
    pii_redact: list[PiiType] = Field(
        default_factory=list,
        description="PII types replaced by [TYPE] placeholders, e.g. [EMAIL, PHONE]; empty: off.",
    )
    pii_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="Extra PII regexes by placeholder name, e.g. {MRN: 'MRN[:# ]*[0-9]{6,10}'}.",
    )
    dedup: Literal["off", "report", "exact", "near"] = Field(
        "report",
        description="Duplicates: report only, remove exact ones, or remove exact and near ones.",
    )
    dedup_threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Word-set Jaccard similarity from which two rows are near duplicates.",
    )
    split: Literal["random", "stratified", "group"] = Field(
        "random",
        description="How rows are split: at random, stratified by label, or by data.group_by.",
    )
    group_by: str | None = Field(
        None,
        validate_default=True,
        description="Column whose rows stay in one split (e.g. a document id); for split: group.",
    )

    @field_validator("pii_patterns")
    @classmethod
    def _compile_pii_patterns(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, regex in patterns.items():
            compile_pii_pattern(name, regex)  # raises ValueError naming the bad pattern
        return patterns

    @field_validator("group_by")
    @classmethod
    def _check_group_split(cls, group_by: str | None, info: ValidationInfo) -> str | None:
        split = info.data.get("split")
        if split == "group" and not group_by:
            raise ValueError(
                "data.split is 'group': name the column that groups rows in data.group_by"
            )
        if group_by and split != "group":
            raise ValueError(
                f"data.split is {split!r}; set data.split: group to split by data.group_by"
            )
        return group_by


class TrainConfig(_Strict):
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters or all weights.")
    objective: Literal["sft", "dpo", "orpo"] = Field(
        "sft",
        description="What to learn: sft (the answers), or from preference pairs dpo (against the base model) or orpo (no reference).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="dpo: temperature of the implicit reward; orpo: weight of the odds-ratio term (TRL's conventions).",
    )
    dpo_loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="dpo: sigmoid (the DPO paper's loss) or ipo (squared, on log-probs per answer token).",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha/r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names that get adapters, or 'all-linear'."
    )
    lora_layers: int | None = Field(
        None, ge=1, description="Adapt only the top N layers (backward stops below them: faster)."
    )
    use_dora: bool = Field(
        False, description="Weight-decomposed LoRA (DoRA); slower, sometimes better."
    )
    loraplus_lr_ratio: float | None = Field(
        None,
        ge=1.0,
        description="LoRA+: the B matrices learn at lr times this (e.g. 16); None = one lr for all.",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="Time budget: stop when this much training time is spent; the LR schedule decays over it.",
    )
    batch_size: int = Field(
        16, ge=1, description="Examples per micro-batch (dpo/orpo: pairs, each two rows)."
    )
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warm-up."
    )
    lr_warmup_steps: int = Field(10, ge=0, description="Linear warm-up length in optimiser steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this norm.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="'auto' uses bf16 where the hardware runs it fast (AMX CPUs, CUDA)."
    )
    packing: bool = Field(
        False,
        description="Pack several examples per row (attention kept per example); batch_size then counts rows.",
    )
    activation_checkpointing: bool = Field(
        False,
        description="Memory-lean: recompute activations in backward, return freed memory to the OS (less memory, slower; measured: docs/results.md).",
    )
    shared_prefix: bool = Field(
        True,
        description="Run the prompt start all rows of a micro-batch share (system prompt, headers) once, not per row; same result, faster.",
    )
    cache_frozen_layers: bool = Field(
        True,
        description="With lora_layers: keep each example's output of the frozen layers below them after its first pass, so later epochs run only the top layers; same result.",
    )
    label_weighting: LabelWeighting = Field(
        "none",
        description="Labelled data: weight examples by 1/count (balanced) or 1/sqrt(count) of their label, for macro-F1.",
    )
    general_replay: int = Field(
        0,
        ge=0,
        le=1000,
        description="Mix the base model's own answers to this many of the 1,000 bundled general prompts into training, against forgetting (0 = off).",
    )
    general_replay_kl: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Replay: the share of each replayed token's target that is the base model's own next-token distribution (a KL term to the base); 0 = its greedy answer only.",
    )
    general_replay_share: float | None = Field(
        None,
        gt=0,
        le=0.5,
        description="Share of training rows that are general replay; the chats are repeated to reach it (default: each chat once).",
    )
    general_replay_weight: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Replay: each replayed token's loss weight against a domain token's 1; above 1, a smaller general_replay_share gives the same pull in expectation and displaces fewer domain rows.",
    )
    general_replay_answer_tokens: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Replay: train only the first N tokens of each replayed answer (shorter, cheaper rows); null: the whole answer (at most 64 tokens).",
    )
    eval_every_steps: int | None = Field(
        None, ge=1, description="Validation loss every N steps (default: at the end only)."
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many validations without a better val loss; keep the best.",
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint every N optimiser steps."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Newest checkpoints kept (the best is kept as well)."
    )
    resume: bool = Field(
        False, description="Continue from the newest complete checkpoint in the run folder."
    )
    log_every_steps: int = Field(5, ge=1, description="Write a metrics.jsonl row every N steps.")
    fsdp: bool = Field(
        False,
        description="Under torchrun/accelerate launch: shard weights, gradients and optimiser state (FSDP2) instead of DDP.",
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Metric sinks besides metrics.jsonl; 'mlflow' logs to <run>/mlflow.db (pip install tunewright[mlflow]).",
    )
    seed: int = Field(0, description="Seed for initialisation, dropout and data order.")
    init_adapter: str | None = Field(
        None,
        description="LoRA: start from this adapter folder's weights (its own rank and targets) instead of new ones; `run` sets it to chain preference tuning after SFT.",
    )
    scaling_fractions: list[float] = Field(
        default_factory=list,
        description="`run` also trains on these shares of the train split (nested, e.g. [0.25, 0.5, 1]) and plots the test score.",
    )

    @field_validator("scaling_fractions")
    @classmethod
    def _check_fractions(cls, fractions: list[float]) -> list[float]:
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"train.scaling_fractions must lie in (0, 1], got {bad}")
        return sorted(set(fractions))


class JudgeConfig(_Strict):
    enabled: bool = Field(
        False, description="Grade answers with an LLM judge (adds judge_score); needs an endpoint."
    )
    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="OpenAI-compatible endpoint of the judge, e.g. https://api.openai.com/v1.",
    )
    model: str = Field(
        "", description="Judge model name as the endpoint knows it, e.g. gpt-4o-mini."
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the API key (never stored); null: no key.",
    )
    rubric: str | None = Field(
        None,
        description="Judging instructions; empty: is the answer correct and helpful vs the reference.",
    )
    scale: Literal["1-5", "pass_fail"] = Field(
        "1-5", description="Judge score: a rating 1-5, or pass/fail (1/0)."
    )

    @model_validator(mode="after")
    def _check_model(self) -> JudgeConfig:
        if self.enabled and not self.model.strip():
            raise ValueError(
                "evaluate.judge.enabled is true: name the judge model in evaluate.judge.model"
            )
        return self


EvalModel = Literal["base_0shot", "base_kshot", "tuned", "tfidf_logreg", "embed_logreg"]
# The variants scored when a recipe names none. The classic classifiers (tfidf_logreg,
# embed_logreg) need a label set: on a generation task the default list skips them with a note,
# while a list that names them explicitly is an error (evaluate/runner.py plan_baselines).
DEFAULT_EVAL_MODELS = ("base_0shot", "base_kshot", "tuned", "tfidf_logreg", "embed_logreg")


class EvalConfig(_Strict):
    task: Literal["auto", "classification", "generation"] = Field(
        "auto", description="'classification' when every answer is one of a few labels."
    )
    max_new_tokens: int = Field(32, ge=1, description="Generation limit per answer.")
    label_decoding: Literal["free", "constrained"] = Field(
        "free", description="Classification: 'constrained' lets models generate only label names."
    )
    batch_size: int = Field(32, ge=1, description="Prompts per generation batch.")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="Time budget: stop scoring more test rows when it is spent; every model scores the same rows (a seeded sample).",
    )
    models: list[EvalModel] = Field(
        default_factory=lambda: list(DEFAULT_EVAL_MODELS),
        description="Variants scored: base with the labels listed, base with base_shots "
        "examples, tuned, and (classification) TF-IDF / base-embedding + logistic regression.",
    )
    embed_max_train_examples: int | None = Field(
        1000,
        ge=2,
        description="embed_logreg: embed at most this many train examples (seeded); null: all.",
    )
    base_shots: int = Field(
        5, ge=1, description="Train examples shown to base_kshot as earlier chat turns."
    )
    compare_runs: list[str] = Field(
        default_factory=list,
        description="Other run folders whose tuned model is scored on the same examples.",
    )
    general_check: bool = Field(
        True,
        description="Ask base and tuned 160 general questions to check no general ability was lost.",
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig, description="Optional LLM judge (off by default)."
    )

    @field_validator("models", mode="before")
    @classmethod
    def _legacy_base_name(cls, value):
        # run folders written by tunewright 0.1.0 say "base" for what is now base_0shot
        return (
            ["base_0shot" if v == "base" else v for v in value]
            if isinstance(value, list)
            else value
        )


class PreferenceConfig(_Strict):
    """`tunewright run`'s second stage: preference tuning on pairs built from a model's own
    answers to the train questions, continuing the SFT adapter (tunewright/preference.py)."""

    objective: Literal["dpo", "orpo"] = Field("dpo", description="The preference loss.")
    rejected_from: Literal["sft_mistakes", "base_answers"] = Field(
        "sft_mistakes",
        description="Rejected answers: the SFT model's wrong answers (classification: hard negatives), or the base model's answers (generation; chosen = the reference).",
    )
    max_questions: int = Field(
        600, ge=1, description="Train questions answered to find pairs (a seeded sample)."
    )
    beta: float = Field(0.1, gt=0, description="DPO temperature; ORPO's odds-ratio weight.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of the preference stage.")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    max_minutes: float | None = Field(
        None, gt=0, description="Time budget of the preference stage's training."
    )
    batch_size: int = Field(8, ge=1, description="Pairs per micro-batch.")


class RunConfig(_Strict):
    name: str = Field("run", description="Run name; the run folder is output_dir/name.")
    output_dir: str = Field("runs", description="Parent folder of run folders.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data collection and splits.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings.")
    evaluate: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    preference: PreferenceConfig | None = Field(
        None, description="`run`: preference tuning after SFT, on pairs from the models' answers."
    )
    recipe_dir: str = Field(
        ".", description="Folder that relative data paths are resolved against (set by the loader)."
    )

    @model_validator(mode="after")
    def _check_data(self) -> RunConfig:
        if self.data.test_files == [] and self.data.test_fraction == 0:
            raise ValueError(
                "data.test_fraction is 0 and data.test_files is empty: nothing to test on"
            )
        return self

    @model_validator(mode="after")
    def _check_train(self) -> RunConfig:
        if self.train.early_stopping_patience and not self.train.eval_every_steps:
            raise ValueError(
                "train.early_stopping_patience needs train.eval_every_steps (how often to validate)"
            )
        if self.train.general_replay_kl and self.train.packing:
            raise ValueError("train.general_replay_kl needs plain rows: set train.packing to false")
        if self.preference is not None and self.train.scaling_fractions:
            raise ValueError(
                "train.scaling_fractions and a preference section cannot be combined: the "
                "scaling curve is of SFT runs"
            )
        self._check_objective()
        return self

    def _check_objective(self) -> None:
        tc = self.train
        if tc.dpo_loss != "sigmoid" and tc.objective != "dpo":
            raise ValueError(
                f"train.dpo_loss is {tc.dpo_loss!r} but train.objective is {tc.objective!r}: "
                "it applies to dpo only"
            )
        if tc.objective == "sft":
            return
        refused = {  # key: (its value, whether it is refused, what to do)
            "train.packing": (
                tc.packing,
                tc.packing,
                "set it to false: a packed row would mix pairs, each pair is two rows of its own",
            ),
            "train.general_replay": (
                tc.general_replay,
                tc.general_replay > 0,
                "set it to 0: replay trains answers (SFT), and preference tuning has no answers "
                "to learn",
            ),
            "train.label_weighting": (
                tc.label_weighting,
                tc.label_weighting != "none",
                "set it to none: every pair weighs the same",
            ),
        }
        for key, (value, bad, fix) in refused.items():
            if bad:
                raise ValueError(
                    f"{key}={value!r} does not apply to train.objective {tc.objective!r}: {fix}"
                )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def resolve_path(self, path: str) -> Path:
        """A data path from the recipe, resolved against the recipe's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.recipe_dir) / p


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted_key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Turn `train.lr=1e-4` strings into (key, value) pairs; values are parsed as YAML."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        pairs.append((key.strip(), yaml.safe_load(raw) if raw != "" else None))
    return pairs


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: the configuration is not valid:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see `tunewright schema`)")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(recipe: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a recipe YAML (or defaults when None), apply dotted overrides and validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if recipe is not None:
        path = Path(recipe)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: a recipe must be a mapping of sections, got {type(loaded).__name__}"
            )
        tree = loaded or {}
        tree.setdefault("recipe_dir", str(path.resolve().parent))
        tree.setdefault("name", path.stem)
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (what actually ran)."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
