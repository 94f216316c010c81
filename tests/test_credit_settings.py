"""One source per credit setting: CreditConfig's field metadata gives OARConfig's credit_* fields (default, help,
choices), the mapping back to CreditConfig, and `oarl explain`'s credit flags."""

import dataclasses
from typing import get_args, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trl import GRPOConfig, TrlParser

from oarl import OARConfig
from oarl.cli import main
from oarl.credit import CreditConfig
from oarl.credit.config import (
    APPLY_TO,
    ESTIMATORS,
    OUTCOMES,
    SETTINGS,
    SPANS,
    SettingError,
    flag_name,
    help_text,
    trainer_name,
)
from oarl.devices import ACTIVATION_CHECKPOINTING

OWN = [f for f in dataclasses.fields(CreditConfig) if not f.metadata["grpo"]]  # the settings OARConfig declares
FLAGGED = [f for f in dataclasses.fields(CreditConfig) if f.metadata["flag"]]


def oar_args(tmp_path, **kw):
    return OARConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **kw)


def test_oarconfig_fields_are_credit_config_metadata():
    oar_fields = {f.name: f for f in dataclasses.fields(OARConfig)}
    oar_types, credit_types = get_type_hints(OARConfig), get_type_hints(CreditConfig)
    for f in OWN:
        oar = oar_fields[f.metadata["trainer"]]
        assert oar.metadata["help"] == help_text(f.name, trainer_name)
        assert oar.metadata.get("choices") == (list(f.metadata["choices"]) if f.metadata["choices"] else None)
        if "trainer_default" in f.metadata:  # documented: None here stands for CreditConfig's default
            assert oar.default is None is f.metadata["trainer_default"]
            assert type(None) in get_args(oar_types[oar.name])
            assert "None in OARConfig" in f.metadata["help"] or f.metadata["trainer_none"] in f.metadata["help"]
        else:
            assert oar.default == f.default and oar_types[oar.name] == credit_types[f.name], f.name
    for f in dataclasses.fields(CreditConfig):
        if f.metadata["grpo"]:  # read from GRPOConfig's own field
            assert f.metadata["trainer"] in {"temperature", "activation_checkpointing"}
            assert {f.metadata["trainer"], ACTIVATION_CHECKPOINTING} & set(GRPOConfig.__dataclass_fields__)
    # and OARConfig declares no credit setting by hand: every field it adds is one of CreditConfig's
    assert set(oar_fields) - set(GRPOConfig.__dataclass_fields__) == {f.metadata["trainer"] for f in OWN}
    assert "{" not in "".join(help_text(name, trainer_name) for name in SETTINGS)  # every {setting} rendered


def test_trl_parser_sees_the_credit_fields(tmp_path):
    parser = TrlParser((OARConfig,))
    actions = {a.dest: a for a in parser._actions}
    for f in OWN:
        action = actions[f.metadata["trainer"]]
        assert action.help == help_text(f.name, trainer_name)
        assert list(action.choices or ()) == list(f.metadata["choices"] or ())
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--credit_threshold",
            "0.3",
            "--credit_span",
            "line",
        ]
    )
    assert (config.credit_threshold, config.credit_config().span) == (0.3, "line")


def test_explain_flags_are_credit_config_metadata(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")  # each flag's help on one line: its own or the next one
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    lines = {}  # flag -> its usage and help
    for line in capsys.readouterr().out.split("options:\n")[1].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
        lines[flag] = f"{lines.get(flag, '')} {line.strip()}"
    assert [f.metadata["flag"] for f in FLAGGED] == [
        "--outcome",
        "--threshold",
        "--beta",
        "--floor",
        "--noise-std",
        "--noise-samples",
        "--chunk-size",
        "--span",
        "--rollouts",
        "--max-steps",
    ]
    for f in FLAGGED:
        line = lines[f.metadata["flag"]]
        assert help_text(f.name, flag_name) in line and (f.metadata["flag_help"] or "") in line
        default = f.metadata["flag_default"] if f.metadata["flag_default"] is not None else f.default
        assert line.endswith(f"(default: {default})" if default is not None else ".")
        if f.metadata["choices"]:
            assert "{" + ",".join(f.metadata["choices"]) + "}" in line


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("threshold", "1.5"),
        ("beta", "-1"),
        ("floor", "2"),
        ("noise_std", "0"),
        ("noise_samples", "0"),
        ("chunk_size", "0"),
        ("rollouts", "0"),
        ("max_steps", "0"),
    ],
)
def test_explain_errors_name_the_flag(tmp_path, capsys, setting, value):
    with pytest.raises(SettingError) as raised:
        CreditConfig(**{setting: (int if SETTINGS[setting].type == "int" else float)(value)})
    assert main(["explain", flag_name(setting), value, "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"oarl explain: {flag_name(setting)} {raised.value.problem}"


def test_setting_error_carries_the_setting_and_the_problem(tmp_path):
    with pytest.raises(SettingError) as raised:
        CreditConfig(noise_samples=0)
    error = raised.value
    assert isinstance(error, ValueError)
    assert (error.setting, error.problem) == ("noise_samples", "must be an integer >= 1, got 0")
    assert str(error) == "noise_samples must be an integer >= 1, got 0"
    with pytest.raises(SettingError) as raised:
        oar_args(tmp_path, credit_noise_samples=0)
    assert str(raised.value) == "credit_noise_samples must be an integer >= 1, got 0"
    with pytest.raises(SettingError, match="^credit must be one of"):
        oar_args(tmp_path, credit="magic")
    config = oar_args(tmp_path)
    config.temperature = 0.0  # GRPOConfig's own field, named as it is (check_grpo refuses it first in __post_init__)
    with pytest.raises(SettingError, match="^temperature must be a finite number > 0"):
        config.credit_config()


# Valid values of every setting (a new setting fails the round trip until it has a strategy here).
VALUES = {
    "estimator": st.sampled_from(ESTIMATORS),
    "outcome": st.sampled_from((None, *OUTCOMES)),
    "threshold": st.floats(0.01, 0.99),
    "beta": st.floats(0.0, 10.0),
    "floor": st.floats(0.0, 1.0),
    "noise_std": st.floats(1e-6, 1.0),
    "noise_samples": st.integers(1, 8),
    "chunk_size": st.integers(1, 64),
    "apply_to": st.sampled_from((None, *APPLY_TO)),
    "replace_with": st.none() | st.integers(0, 10**6),
    "reuse_prefix": st.sampled_from(("auto", True, False)),
    "span": st.sampled_from((None, *SPANS)),
    "batch_size": st.none() | st.integers(1, 64),
    "rollouts": st.integers(1, 32),
    "max_steps": st.integers(1, 32),
    "grail_scale": st.floats(0.0, 5.0),
    "grail_min": st.floats(0.0, 1.0),
    "grail_max": st.floats(1.0, 10.0),
    "temperature": st.floats(0.05, 2.0),
    "refine": st.booleans(),
    "activation_checkpointing": st.booleans(),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries(VALUES))
def test_oarconfig_round_trips_every_setting(tmp_path, values):
    assert set(VALUES) == set(SETTINGS)
    if values["refine"]:  # refine needs steps to refine
        values.update(
            estimator="perturbation", span=values["span"] if values["span"] in ("line", "sentence") else "line"
        )
    expected = CreditConfig(**values)
    given_values = {trainer_name(name): value for name, value in values.items()}
    given_values[ACTIVATION_CHECKPOINTING] = given_values.pop("activation_checkpointing")
    given_values["credit_reuse_prefix"] = None if values["reuse_prefix"] == "auto" else values["reuse_prefix"]
    config = oar_args(tmp_path, per_device_train_batch_size=4, num_generations=2, **given_values)
    if values["batch_size"] is None:  # OARConfig's None: a pass of one training micro-batch
        expected = dataclasses.replace(expected, batch_size=4)
    assert config.credit_config() == expected
