"""Probe files: what the panorama probe trains and compares.

A probe file (YAML, or JSON by its `.json` suffix) holds:

* `seeds` (at least one; the report's spread needs three or more): each seed draws its own dataset and initial
  weights, and every configuration is trained once per seed;
* `data`: `train_panoramas`, `test_panoramas`, `height` (of the equirectangular images, a multiple of 8);
* `model`: `PanoVLMConfig` overrides shared by every configuration (on top of `tiny_checkpoint.tiny_config`;
  `resampler_type` picks the resampler);
* `batch_size` and `stages`: per stage (`vision`, `resampler`, `finetune`) the `StageOptions` it trains with
  (`max_steps`, `learning_rate`, ...);
* `configurations`: a list, each with a unique `name`, optional `config` (more `PanoVLMConfig` overrides) and
  optional `stages` (which stages run, in order; default all three), e.g. `{name: no_pe, config:
  {use_panorama_pe: false}}` or `{name: no_vision_stage, stages: [resampler, finetune]}`.

Every key is checked: an unknown one is an error naming it and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modeling_panovlm.training.run_file import read_options_file
from modeling_panovlm.training.stages import STAGES


STAGE_ORDER = tuple(STAGES)
_TOP_KEYS = {"seeds", "data", "model", "batch_size", "stages", "configurations"}
_DATA_KEYS = {"train_panoramas", "test_panoramas", "height"}
_CONFIGURATION_KEYS = {"name", "config", "stages"}
# `panovlm probe --quick`: a few steps and panoramas, two seeds; checks the pipeline, learns nothing.
QUICK_STEPS = 2
QUICK_PANORAMAS = 8
QUICK_SEEDS = 2


@dataclass(frozen=True)
class ProbeConfiguration:
    """One configuration of the probe: its `name`, `PanoVLMConfig` overrides and the stages it trains."""

    name: str
    config: dict = field(default_factory=dict)
    stages: tuple[str, ...] = STAGE_ORDER


@dataclass(frozen=True)
class ProbeSpec:
    """A parsed probe file (see the module docstring)."""

    seeds: tuple[int, ...]
    configurations: tuple[ProbeConfiguration, ...]
    train_panoramas: int = 2000
    test_panoramas: int = 480
    height: int = 64
    model: dict = field(default_factory=dict)
    batch_size: int = 16
    stages: dict = field(default_factory=dict)
    source: str = "<dict>"

    def quick(self) -> ProbeSpec:
        """The same probe at `--quick` size: `QUICK_STEPS` steps per stage, `QUICK_PANORAMAS` panoramas per split,
        the first `QUICK_SEEDS` seeds."""
        stages = {name: {**options, "max_steps": QUICK_STEPS} for name, options in self.stages.items()}
        stages.update({name: {"max_steps": QUICK_STEPS} for name in STAGE_ORDER if name not in stages})
        return ProbeSpec(
            seeds=self.seeds[:QUICK_SEEDS],
            configurations=self.configurations,
            train_panoramas=QUICK_PANORAMAS,
            test_panoramas=QUICK_PANORAMAS,
            height=self.height,
            model=self.model,
            batch_size=min(self.batch_size, 4),
            stages=stages,
            source=f"{self.source} (--quick)",
        )


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{source}: {message}")


def _int(value, source: str, key: str, minimum: int) -> int:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, source, f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_probe(content: dict, source: str = "<dict>") -> ProbeSpec:
    """A `ProbeSpec` from the mapping of a probe file; `ValueError` naming `source` and the key for anything wrong."""
    _require(isinstance(content, dict), source, f"a probe file holds a mapping, got {type(content).__name__}")
    unknown = sorted(set(content) - _TOP_KEYS)
    _require(not unknown, source, f"unknown keys {unknown}; a probe file has {sorted(_TOP_KEYS)}")
    for key in ("seeds", "configurations"):
        _require(key in content, source, f"no {key!r}")
    seeds = content["seeds"]
    _require(isinstance(seeds, list) and seeds, source, f"seeds must be a non-empty list of integers, got {seeds!r}")
    seeds = tuple(_int(seed, source, "each seed", 0) for seed in seeds)
    _require(len(set(seeds)) == len(seeds), source, f"seeds must be distinct, got {list(seeds)}")
    data = content.get("data") or {}
    _require(isinstance(data, dict) and not set(data) - _DATA_KEYS, source, f"data takes {sorted(_DATA_KEYS)}, got {data!r}")
    model = content.get("model") or {}
    _require(isinstance(model, dict), source, f"model must be a mapping of PanoVLMConfig fields, got {model!r}")
    stages = content.get("stages") or {}
    _require(isinstance(stages, dict), source, f"stages must map stage names to their options, got {stages!r}")
    for name, options in stages.items():
        _require(name in STAGE_ORDER, source, f"stages: unknown stage {name!r}; expected {list(STAGE_ORDER)}")
        _require(isinstance(options, dict), source, f"stages.{name} must be a mapping of stage options, got {options!r}")
        fixed = sorted({"stage", "model", "train_csv", "output_dir", "seed", "batch_size"} & set(options))
        _require(not fixed, source, f"stages.{name}: {fixed} are set by the probe itself")
    configurations = content["configurations"]
    _require(isinstance(configurations, list) and configurations, source, "configurations must be a non-empty list")
    parsed = []
    for index, entry in enumerate(configurations):
        where = f"configurations[{index}]"
        _require(isinstance(entry, dict) and "name" in entry, source, f"{where} must be a mapping with a name, got {entry!r}")
        unknown = sorted(set(entry) - _CONFIGURATION_KEYS)
        _require(not unknown, source, f"{where} ({entry['name']!r}): unknown keys {unknown}; expected {sorted(_CONFIGURATION_KEYS)}")
        name, config = entry["name"], entry.get("config") or {}
        _require(isinstance(name, str) and name.replace("_", "").replace("-", "").isalnum(), source,
                 f"{where}: name must be letters, digits, - and _ (it names a directory), got {name!r}")
        _require(isinstance(config, dict), source, f"{where} ({name!r}): config must be a mapping of PanoVLMConfig fields")
        run = entry.get("stages", list(STAGE_ORDER))
        _require(isinstance(run, list) and run and all(stage in STAGE_ORDER for stage in run), source,
                 f"{where} ({name!r}): stages must be a non-empty list of {list(STAGE_ORDER)}, got {run!r}")
        _require(run == sorted(run, key=STAGE_ORDER.index) and len(set(run)) == len(run), source,
                 f"{where} ({name!r}): stages must be distinct and in the order {list(STAGE_ORDER)}, got {run}")
        _require(STAGES[run[-1]].loss == "lm", source, f"{where} ({name!r}): the last stage must train the language side, not {run[-1]!r}")
        parsed.append(ProbeConfiguration(name, dict(config), tuple(run)))
    names = [configuration.name for configuration in parsed]
    _require(len(set(names)) == len(names), source, f"configuration names must be unique, got {names}")
    return ProbeSpec(
        seeds=seeds,
        configurations=tuple(parsed),
        train_panoramas=_int(data.get("train_panoramas", 2000), source, "data.train_panoramas", 4),
        test_panoramas=_int(data.get("test_panoramas", 480), source, "data.test_panoramas", 4),
        height=_int(data.get("height", 64), source, "data.height", 8),
        model=dict(model),
        batch_size=_int(content.get("batch_size", 16), source, "batch_size", 1),
        stages={name: dict(options) for name, options in stages.items()},
        source=source,
    )


def load_probe_file(path: str | Path) -> ProbeSpec:
    """Read and check a probe file (YAML, or JSON by its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"probe file {path} does not exist")
    return parse_probe(read_options_file(path), str(path))


__all__ = ["ProbeConfiguration", "ProbeSpec", "QUICK_PANORAMAS", "QUICK_SEEDS", "QUICK_STEPS", "STAGE_ORDER", "load_probe_file", "parse_probe"]
