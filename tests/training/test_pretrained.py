"""--pretrained_weights from upstream nnU-Net v2 ``.pth`` files (the committed tiny upstream models) and from
pnnunet ``.pdparams``: every non-head tensor is taken unchanged, the heads are not, a network that does not fit
is refused naming the first differing parameter, both shapes and the fix."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from pnnunet.errors import PnnunetError  # noqa: E402
from pnnunet.fileio import load_json  # noqa: E402
from pnnunet.runtime.architectures import build_network  # noqa: E402
from pnnunet.runtime.checkpoints import save_checkpoint  # noqa: E402
from pnnunet.runtime.torch_checkpoint import read_torch_checkpoint  # noqa: E402
from pnnunet.training.pretrained import (  # noqa: E402
    apply_pretrained_weights, check_pretrained_weights, load_pretrained_weights)
from tests.conftest import REPO  # noqa: E402

MODELS = REPO / "tests" / "data" / "upstream_models" / "Dataset004_Hippocampus"
UPSTREAM = {  # model folder -> configuration
    "nnUNetTrainer__nnUNetPlansTiny__3d_fullres": "3d_fullres",
    "nnUNetTrainer__nnUNetPlansTiny__2d": "2d",
    "nnUNetTrainer__nnUNetResEncUNetPlansTiny__3d_fullres": "3d_fullres",
}
NUM_CLASSES = 3


def plan_configuration(model: str) -> dict:
    plans = load_json(MODELS / model / "plans.json")
    return plans["configurations"][UPSTREAM[model]]


def network_of(configuration: dict, input_channels: int = 1, num_classes: int = NUM_CLASSES):
    with paddle.utils.unique_name.guard():
        return build_network(configuration, input_channels, num_classes, deep_supervision=True)


def upstream_to_test_name(name: str, plain: bool) -> str | None:
    """This test's own reading of the two upstream→Paddle naming differences (models_and_scale §2); None for
    the aliases (``all_modules``, the decoder's copy of the encoder), which hold the same tensors."""
    if name.startswith("decoder.encoder.") or ".all_modules." in name:
        return None
    if plain:
        name = re.sub(r"^encoder\.stages\.(\d+)\.0\.", r"encoder.stages.\1.", name)
    return re.sub(r"norm\.weight$", "norm.scale", name)


@pytest.mark.parametrize("model", sorted(UPSTREAM))
def test_upstream_pth_non_head_weights_equal_the_file(model):
    configuration = plan_configuration(model)
    kind = configuration["architecture"]["network_class_name"]
    pth = MODELS / model / "fold_0" / "checkpoint_final.pth"
    network = network_of(configuration)
    heads_before = {k: v.numpy().copy() for k, v in network.state_dict().items() if "seg_layers" in k}
    pretrained = load_pretrained_weights(pth, kind)
    assert pretrained.framework == "nnU-Net v2"
    assert (pretrained.dataset_name, pretrained.configuration) == ("Dataset004_Hippocampus", UPSTREAM[model])
    apply_pretrained_weights(network, pretrained, "Dataset010_Target", "nnUNetPlansTinyFrom4", UPSTREAM[model])

    own = {k: v.numpy() for k, v in network.state_dict().items()}
    compared = set()
    for name, tensor in read_torch_checkpoint(pth)["network_weights"].items():
        ours = upstream_to_test_name(name, plain=kind.endswith("PlainConvUNet"))
        if ours is None or "seg_layers" in name:
            continue
        np.testing.assert_array_equal(own[ours], tensor, err_msg=name)
        compared.add(ours)
    assert compared == {k for k in own if "seg_layers" not in k}  # every non-head tensor came from the file
    for k, before in heads_before.items():  # the heads are the target's own (here: untouched initialisation)
        np.testing.assert_array_equal(own[k], before)


def test_heads_of_another_label_count_are_not_needed():
    """The target may segment other labels: only the heads differ, and they are not taken."""
    model = "nnUNetTrainer__nnUNetPlansTiny__3d_fullres"
    network = network_of(plan_configuration(model), num_classes=5)
    pretrained = load_pretrained_weights(MODELS / model / "fold_0" / "checkpoint_final.pth", "PlainConvUNet")
    apply_pretrained_weights(network, pretrained, "Dataset010_Target", "P", "3d_fullres")
    assert list(network.state_dict()["decoder.seg_layers.0.weight"].shape)[0] == 5


def test_pnnunet_pdparams_are_taken_too(tmp_path):
    configuration = plan_configuration("nnUNetTrainer__nnUNetPlansTiny__3d_fullres")
    source = network_of(configuration)
    for p in source.parameters():  # values unlike any fresh initialisation
        p.set_value(paddle.full(p.shape, float(np.prod(p.shape) % 7) + 0.5))
    path = tmp_path / "checkpoint_final.pdparams"
    origin = {"plans": {"dataset_name": "Dataset004_Hippocampus", "plans_name": "pnnunetPlans"},
              "configuration": "3d_fullres"}
    save_checkpoint(path, {"network_weights": source.state_dict(), "init_args": origin})
    target = network_of(configuration)
    pretrained = load_pretrained_weights(path)
    assert pretrained.framework == "pnnunet" and pretrained.plans_name == "pnnunetPlans"
    apply_pretrained_weights(target, pretrained, "Dataset010_Target", "pnnunetPlans", "3d_fullres")
    want, got = source.state_dict(), target.state_dict()
    for k in want:
        if "seg_layers" not in k:
            np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=k)
        else:
            assert not np.array_equal(got[k].numpy(), want[k].numpy()), k


def test_mismatch_names_the_first_parameter_both_shapes_and_the_fix():
    model = "nnUNetTrainer__nnUNetPlansTiny__3d_fullres"
    wider = copy.deepcopy(plan_configuration(model))
    wider["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32]  # the target's own planning
    network = network_of(wider)
    before = {k: v.numpy().copy() for k, v in network.state_dict().items()}
    pretrained = load_pretrained_weights(MODELS / model / "fold_0" / "checkpoint_final.pth", "PlainConvUNet")
    with pytest.raises(PnnunetError) as e:
        apply_pretrained_weights(network, pretrained, "Dataset010_Target", "nnUNetPlans", "3d_fullres")
    msg = str(e.value)
    assert ("parameter encoder.stages.0.convs.0.conv.weight is [4, 1, 3, 3, 3] in the checkpoint but "
            "[8, 1, 3, 3, 3] in this network") in msg
    assert "trained on Dataset004_Hippocampus, plans nnUNetPlansTiny, 3d_fullres" in msg
    assert ("fix: move the plans first with pnnunet_move_plans_between_datasets -s Dataset004_Hippocampus -t "
            "Dataset010_Target -sp nnUNetPlansTiny -tp nnUNetPlansTiny_from_Dataset004") in msg
    for k, v in network.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(v.numpy(), before[k])


def test_transposed_conv_mismatch_is_the_first_named_when_the_encoder_fits():
    """upstream #2760: same features, other strides (the target's shapes) → the first transposed conv differs."""
    model = "nnUNetTrainer__nnUNetPlansTiny__3d_fullres"
    other = copy.deepcopy(plan_configuration(model))
    other["architecture"]["arch_kwargs"]["strides"][2] = [2, 2, 1]
    pretrained = load_pretrained_weights(MODELS / model / "fold_0" / "checkpoint_final.pth", "PlainConvUNet")
    with pytest.raises(PnnunetError) as e:
        check_pretrained_weights(network_of(other), pretrained, "Dataset010_Target", "nnUNetPlans", "3d_fullres")
    msg = str(e.value)
    assert "parameter decoder.transpconvs.0.weight is [16, 8, 2, 2, 2] in the checkpoint but [16, 8, 2, 2, 1]" in msg


def test_other_input_channels_are_named():
    model = "nnUNetTrainer__nnUNetPlansTiny__3d_fullres"
    pretrained = load_pretrained_weights(MODELS / model / "fold_0" / "checkpoint_final.pth", "PlainConvUNet")
    with pytest.raises(PnnunetError, match=r"trained with 1 input channel\(s\), this dataset has 2"):
        check_pretrained_weights(network_of(plan_configuration(model), input_channels=2), pretrained, "D", "P",
                                 "3d_fullres")


def test_another_architecture_is_refused():
    """A ResidualEncoderUNet checkpoint for a PlainConvUNet plan: the first plain tensor is missing from it."""
    pretrained = load_pretrained_weights(MODELS / "nnUNetTrainer__nnUNetResEncUNetPlansTiny__3d_fullres" / "fold_0"
                                         / "checkpoint_final.pth", "PlainConvUNet")
    with pytest.raises(PnnunetError, match=r"parameter encoder\.stages\.0\.convs\.0\.conv\.weight \[4, 1, 3, 3, 3\] "
                                           r"of this network is not in the checkpoint"):
        check_pretrained_weights(network_of(plan_configuration("nnUNetTrainer__nnUNetPlansTiny__3d_fullres")),
                                 pretrained, "D", "P", "3d_fullres")


@pytest.mark.parametrize("content, expected", [
    (None, "pretrained weights not found"),
    (b"not a checkpoint", "cannot be loaded as a pnnunet checkpoint"),
])
def test_bad_files_are_clear_errors(tmp_path, content, expected):
    path = tmp_path / "weights.pdparams"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PnnunetError, match=expected):
        load_pretrained_weights(path)


def test_a_torch_file_of_another_model_is_refused():
    """The reader fixture's ``network_weights`` is a lone Linear layer's (``weight``, ``bias``): not an nnU-Net."""
    pretrained = load_pretrained_weights(REPO / "tests" / "data" / "upstream_models" / "reader" / "tensors.pth")
    with pytest.raises(PnnunetError, match=r"parameter encoder\.stages\.0\.convs\.0\.conv\.weight \[4, 1, 3, 3, 3\] "
                                           r"of this network is not in the checkpoint.*\n  fix: move the plans first"):
        check_pretrained_weights(network_of(plan_configuration("nnUNetTrainer__nnUNetPlansTiny__3d_fullres")),
                                 pretrained, "D", "P", "3d_fullres")
