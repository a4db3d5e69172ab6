"""Third-party warnings go to the run's log.txt, not the console; layerif's own warnings stay on the
console; --debug shows everything."""

from __future__ import annotations

import logging
import warnings

import pytest

from layerif_core import logs


@pytest.fixture
def cli_logging():
    levels = {name: logging.getLogger(name).level for name in logs.THIRD_PARTY}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield
        logging.captureWarnings(False)
        for handler in logs._INSTALLED:
            logging.getLogger().removeHandler(handler)
        logs._INSTALLED.clear()
        logs._RUN_LOG = None
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _emit() -> None:
    warnings.warn_explicit("Could not find a config file", UserWarning, "peft/utils/save.py", 1,
                           module="peft.utils.save")
    logging.getLogger("transformers.modeling_utils").warning("is_gradient_checkpointing is deprecated")
    logging.getLogger("layerif").warning("helpful_sum is 0 in every layer; use another aggregator")


def test_third_party_warnings_are_kept_in_the_run_log(cli_logging, tmp_path, capsys):
    logs.setup(debug=False, quiet=False)
    _emit()
    logs.attach_run_log(tmp_path)
    err = capsys.readouterr().err
    assert "helpful_sum is 0 in every layer" in err
    assert "Could not find a config file" not in err and "is_gradient_checkpointing" not in err
    text = (tmp_path / "log.txt").read_text()
    for message in ("Could not find a config file", "is_gradient_checkpointing", "helpful_sum is 0"):
        assert message in text


def test_debug_shows_third_party_warnings(cli_logging, tmp_path, capsys):
    logs.setup(debug=True, quiet=False)
    _emit()
    err = " ".join(capsys.readouterr().err.split())
    assert "Could not find a config file" in err and "is_gradient_checkpointing" in err
