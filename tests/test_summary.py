"""`alexnet summary`: totals equal the pinned counts; neurons are the paper's ~650,000."""

import json
import subprocess
import sys

import pytest

from alexnet.cli import main
from alexnet.models import create_model
from alexnet.summary import summarize


@pytest.mark.parametrize(
    "name,params,macs",
    [("alexnet", 60_965_224, 724_406_816), ("alexnet-1gpu", 62_378_344, 1_135_256_096), ("alexnet-owt", 61_100_840, 714_188_480)],
)
def test_totals(name, params, macs):
    s = summarize(create_model(name), input_size=224)
    assert s.params == params == sum(r.params for r in s.rows)
    assert s.macs == macs


def test_paper_neurons_and_shapes():
    s = summarize(create_model("alexnet"), input_size=227)
    rows = {r.name: r for r in s.rows}
    assert s.neurons == 659_272  # conv1..conv5 and fc6..fc8 output units: the paper's "650,000"
    assert rows["features.conv1"].output_shape == (96, 55, 55)
    assert rows["features.pool5"].output_shape == (256, 6, 6)
    assert rows["features.conv2"].macs == 27 * 27 * 256 * 48 * 25


def test_cli_table_and_json(capsys):
    assert main(["summary", "--arch", "alexnet", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 60_965_224 and data["neurons"] == 659_272
    assert main(["summary", "--arch", "caffenet"]) == 0
    out = capsys.readouterr().out
    assert "60,965,224" in out and "features.norm1" in out


def test_cli_unknown_model_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "alexnet", "summary", "--arch", "vgg"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "valid models" in proc.stderr
