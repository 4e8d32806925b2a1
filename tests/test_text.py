"""Text: the text_folder source and CSV text columns, the tokenizer, the text models, int32 ids through
TFLite and the integer gate, and (slow) a whole recipe whose export predict runs on raw text."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe, configure
from pipeline.data.arrays import CsvParams, CsvSource
from pipeline.data.dataset import split
from pipeline.data.text import TextFolderParams, TextFolderSource, class_folders, text_files
from pipeline.data.tokenizer import OOV, PAD, Tokenizer, TokenizerParams, fit
from pipeline.errors import PipelineError
from pipeline.plugin import registry
from pipeline.run.runner import RunInfo, run
from tests._runs import TINY, compose_config
from tests._text import TOPICS, write_text_csv, write_text_folder


def load_folder(root: Path, seed: int = 0, **params):
    return TextFolderSource(TextFolderParams(name="text_folder", path=str(root), **params)).load(seed)


def load_csv(path: Path, seed: int = 0, **params):
    return CsvSource(CsvParams(name="csv", path=str(path), **params)).load(seed)


# --- tokenizer and sources --------------------------------------------------------------------------


def test_tokenizer_pads_truncates_and_maps_unknown_words():
    tokenizer = fit(["Goal! The team wins.", "the market, the shares"], TokenizerParams(sequence_length=4))
    assert tokenizer.vocabulary[0] == "the"  # commonest first, from id 2
    ids, truncated = tokenizer.encode(["THE team", "the goal team wins market shares", "zebra"])
    assert ids.dtype == np.int32 and ids.shape == (3, 4) and truncated == 1
    assert ids[0].tolist() == [2, tokenizer.vocabulary.index("team") + 2, PAD, PAD]
    assert ids[2].tolist() == [OOV, PAD, PAD, PAD]
    assert tokenizer.truncated == 0 and tokenizer.examples == 2


def test_shipped_vocabulary_gives_the_same_ids(tmp_path):
    tokenizer = fit(["Goal! The team wins.", "the market, the shares"], TokenizerParams(sequence_length=6))
    path = tokenizer.write_vocabulary(tmp_path / "vocab.txt")
    assert path.read_text().split("\n")[:3] == ["[PAD]", "[UNK]", "the"]
    again = Tokenizer.from_files(tokenizer.to_json(path.name), path)
    texts = ["the team; the market", "unknown words only"]
    assert np.array_equal(again.encode(texts)[0], tokenizer.encode(texts)[0])


def test_text_folder_gives_int32_ids_from_a_tokenizer_fitted_on_training_texts_only(tmp_path, caplog):
    root = write_text_folder(tmp_path / "texts", per_class=20)
    for i, path in enumerate(sorted(root.rglob("*.txt"))):  # a word no other text has
        path.write_text(path.read_text() + f" unique{i}")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        data = load_folder(root, sequence_length=100, vocab_size=1000)
    assert data.input_shape == (100,) and data.num_classes == 3 and data.labels == tuple(sorted(TOPICS))
    for x in (data.x_train, data.x_val, data.x_test):
        assert x.dtype == np.int32 and x.min() >= 0 and x.max() < data.tokenizer.vocab_size
    unique = [word for word in data.tokenizer.vocabulary if word.startswith("unique")]
    assert len(unique) == len(data.x_train)  # only the training texts' own words
    assert all((row == OOV).any() for row in data.x_test)  # every test text's own word is unknown
    assert "vocabulary of" in caplog.text


def test_truncated_texts_are_counted_and_said(tmp_path, caplog):
    root = write_text_folder(tmp_path / "texts", per_class=20)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        data = load_folder(root, sequence_length=30)
    long = data.tokenizer.truncated
    assert 0 < long < len(data.x_train)  # one text in five is long
    assert f"data: {long} of {len(data.x_train)} training texts" in caplog.text
    assert "longer than data.sequence_length=30 tokens and were truncated" in caplog.text


def test_csv_text_column(tmp_path):
    data = load_csv(write_text_csv(tmp_path / "reviews.csv", per_class=20), text="review", label="sentiment", sequence_length=16)
    assert data.x_train.dtype == np.int32 and data.input_shape == (16,) and data.labels == tuple(sorted(TOPICS))
    assert data.preprocessing.features == ("review",) and data.preprocessing.label == "sentiment"


def test_the_same_texts_give_the_same_fingerprint_and_another_vocabulary_another(tmp_path):
    root = write_text_folder(tmp_path / "texts", per_class=10)
    assert load_folder(root).fingerprint() == load_folder(root).fingerprint()
    assert load_folder(root).fingerprint() != load_folder(root, standardize="none").fingerprint()


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda root: (root / "sport" / "0000.txt").write_text("  \n"), r"^data.path: .*sport/0000.txt is empty; add its text or remove the file$"),
        (lambda root: (root / "tech" / "bad.txt").write_bytes(b"caf\xe9 au lait"), r"^data.path: .*tech/bad.txt is not UTF-8 text \(byte 0xe9 at position 3\); save it as UTF-8 or remove it$"),
        (lambda root: (root / "empty").mkdir(), r"^data.path: class folder .*empty holds no .txt files; add its texts or remove the folder$"),
    ],
    ids=["empty text", "not UTF-8", "class folder without .txt files"],
)
def test_bad_text_folders_get_one_line(tmp_path, spoil, message):
    root = write_text_folder(tmp_path / "texts", per_class=10)
    spoil(root)
    with pytest.raises(PipelineError, match=message):
        load_folder(root)


def test_a_text_column_of_numbers_or_with_an_empty_cell_gets_one_line(tmp_path):
    path = write_text_csv(tmp_path / "reviews.csv", per_class=10)
    with pytest.raises(PipelineError, match=r"^data.text: column 'id' holds only numbers, not text; name the text column"):
        load_csv(path, text="id", label="sentiment")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",,sport"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=r"^data.text: column 'review' line 4 is empty; fill in or drop the row$"):
        load_csv(path, text="review", label="sentiment")
    with pytest.raises(PipelineError, match=r"^data.text: no column 'text' in the CSV file \(columns: id, review, sentiment\)$"):
        load_csv(path, text="text", label="sentiment")


# --- models -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    return load_folder(write_text_folder(tmp_path_factory.mktemp("texts"), per_class=20), sequence_length=24)


def builder(name: str, data, **params):
    model = configure(registry.MODELS, {"name": name, **params}, "model")
    model.on_data_loaded(data)
    return model


@pytest.mark.parametrize("name", ["transformer", "text_cnn"])
def test_text_models_take_int32_ids_and_output_logits(text_data, name):
    model = builder(name, text_data, dim=16).build(text_data.input_shape, text_data.num_classes)
    assert model.inputs[0].dtype.name == "int32" and model.output_shape == (None, 3)
    assert model.get_layer("tokens").input_dim == text_data.tokenizer.vocab_size
    assert np.isfinite(model.predict(text_data.x_val, verbose=0)).all()


def test_transformer_has_the_configured_blocks_and_heads(text_data):
    model = builder("transformer", text_data, blocks=3, dim=32, heads=8, ff=48).build(text_data.input_shape, 3)
    attention = [layer for layer in model.layers if type(layer).__name__ == "MultiHeadAttention"]
    assert [layer.name for layer in attention] == ["block0_attention", "block1_attention", "block2_attention"]
    assert attention[0].get_config()["num_heads"] == 8 and attention[0].get_config()["key_dim"] == 4
    assert model.get_layer("block1_ffn_in").units == 48


def test_text_models_refuse_images_and_an_unknown_vocabulary(text_data):
    with pytest.raises(PipelineError, match=r"^model=transformer: takes token ids shaped \(sequence_length,\) but the data gives examples of shape \(8, 8, 1\); use text data"):
        configure(registry.MODELS, {"name": "transformer"}, "model").check((8, 8, 1), 10)
    with pytest.raises(PipelineError, match=r"^model.vocab_size: text_cnn needs the vocabulary size; use text data"):
        configure(registry.MODELS, {"name": "text_cnn"}, "model").build((24,), 3)


# --- int32 ids through TFLite -----------------------------------------------------------------------


def test_int8_file_keeps_an_int32_id_input_and_passes_the_integer_gate(text_data, tmp_path):
    from pipeline.measure import litert
    from techniques.conversion import calibration_set, convert
    from techniques.gates import integer_gate
    from techniques.serving import serving_model

    model = builder("transformer", text_data, dim=16, blocks=1).build(text_data.input_shape, 3)
    served = serving_model(model, text_data.preprocessing, "raw", "logits")
    assert served.inputs[0].dtype.name == "int32"  # a float input cast to ids would have the ids quantized
    path = tmp_path / "model.tflite"
    path.write_bytes(convert(served, "int8", calibration_set(text_data.x_train, 50, 0), sparse=False))
    source = litert.interpreter(path, threads=1).get_input_details()[0]
    assert source["dtype"] == np.int32 and source["quantization"] == (0.0, 0)
    integer_gate(path, "stages.quantize", served)  # no float operator, an id input accepted as integer
    float_logits, int8_logits = model.predict(text_data.x_test, verbose=0), litert.predict(path, text_data.x_test)
    assert np.mean(float_logits.argmax(-1) == int8_logits.argmax(-1)) >= 0.9


def test_the_integer_gate_still_refuses_a_float_input(tmp_path, text_data):
    import tensorflow as tf
    import tf_keras as keras

    from techniques.gates import integer_gate

    features = keras.Input((4,))
    model = keras.Model(features, keras.layers.Dense(3)(features))
    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with pytest.raises(PipelineError, match=r"not fully integer \(input is float32; output is float32; float operators FULLY_CONNECTED\)"):
        integer_gate(path, "stages.quantize")


# --- a whole recipe, and predict on raw text ---------------------------------------------------------


def split_test_files(root: Path, seed: int, **params) -> list[Path]:
    """The .txt files the text_folder source puts in the test split (the split is seeded and works on any array)."""
    folders = class_folders(root)
    files = [(path, label) for label, folder in enumerate(folders) for path in text_files(folder)]
    config = TextFolderParams(name="text_folder", path=str(root), **params)
    paths = np.array([str(path) for path, _ in files], dtype=object)
    return [Path(p) for p in split(paths, np.array([label for _, label in files]), config, seed).x_test]


@pytest.mark.slow
def test_mobile_int8_ships_a_transformer_at_the_float_accuracy_and_predict_reads_raw_text(tmp_path):
    from tests.test_predict import predicted_accuracy

    root = write_text_folder(tmp_path / "texts", per_class=40)
    cfg = compose_config(
        tmp_path, "recipe=mobile_int8", *TINY, "model=transformer", "model.blocks=1", "model.dim=16", "model.ff=32",
        "data=text_folder", f"data.path={root}", "data.sequence_length=32", "stages.train.epochs=15",
        "stages.train.learning_rate=0.003", "stages.export.formats=[tflite,keras]",
    )
    check_recipe(cfg)
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="mobile_int8"))
    rows = {row.stage: row.metrics for row in result.rows}
    assert rows["train"]["accuracy"] >= 0.9
    assert rows["quantize"]["accuracy"] >= rows["train"]["accuracy"] - 0.02  # int8 at the float model's accuracy

    export = result.run_dir / "export"
    meta = json.loads((export / "model.json").read_text())
    assert meta["serving"]["tflite"]["input_tensor"]["dtype"] == "int32"
    assert meta["serving"]["tflite"]["output_tensor"]["dtype"] == "int8"
    assert meta["quantization"]["fully_integer"] is True
    assert meta["input"] == {"kind": "text", "shape": [32], "dtype": "int32", "features": [], "label_column": None, "steps": []}
    assert meta["tokenizer"]["vocabulary_file"] == "model.vocab.txt" and meta["tokenizer"]["sequence_length"] == 32
    assert (export / "model.vocab.txt").read_text().split("\n")[:2] == ["[PAD]", "[UNK]"]

    tests = tmp_path / "test_texts"  # the run's test split as raw .txt files in class folders
    for path in split_test_files(root, cfg.seed, sequence_length=32):
        (tests / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tests / path.parent.name / path.name)
    for shipped, stage in ((export, "export"), (export / "model.keras", "prune")):  # int8 file, float Keras file
        correct, total = predicted_accuracy(shipped, tests)
        assert correct / total == rows[stage]["accuracy"]


# --- DistilBERT-style distillation ------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_teacher(text_data, tmp_path_factory):
    """A trained 4-block transformer saved as a file, as a teacher given by path would be."""
    import tf_keras as keras

    model = builder("transformer", text_data, blocks=4, dim=16, heads=2, ff=32).build(text_data.input_shape, 3)
    model.compile(keras.optimizers.Adam(0.005), keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    keras.utils.set_random_seed(0)
    model.fit(text_data.x_train, text_data.y_train, epochs=6, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    model.save(path)
    return model, path


@pytest.mark.slow
def test_a_half_depth_student_starts_from_the_teachers_embeddings_and_every_other_block(text_data, text_teacher):
    from techniques.student_init import initialise_from_teacher

    teacher, _ = text_teacher
    student = builder("transformer", text_data, blocks=2, dim=16, heads=2, ff=32).build(text_data.input_shape, 3)
    assert initialise_from_teacher(student, teacher, None, "stages.distill") == [0, 2]
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(student.get_layer(a).get_weights(), teacher.get_layer(b).get_weights()))  # noqa: E731
    assert same("tokens", "tokens") and same("positions", "positions") and same("classifier", "classifier")
    assert same("block0_attention", "block0_attention") and same("block1_ffn_in", "block2_ffn_in")
    assert not same("block1_ffn_in", "block1_ffn_in")


def test_a_student_that_cannot_start_from_the_teacher_is_named(text_data, text_teacher):
    from techniques.student_init import initialise_from_teacher

    teacher, _ = text_teacher
    wide = builder("transformer", text_data, blocks=2, dim=32, heads=2, ff=32).build(text_data.input_shape, 3)
    with pytest.raises(PipelineError, match=r"^stages.distill.init: the student's tokens has weights \[\(\d+, 32\)\] but the teacher's tokens has \[\(\d+, 16\)\]; give the student the teacher's dim"):
        initialise_from_teacher(wide, teacher, None, "stages.distill")
    deep = builder("transformer", text_data, blocks=3, dim=16, heads=2, ff=32).build(text_data.input_shape, 3)
    with pytest.raises(PipelineError, match=r"^stages.distill.teacher_blocks: \[0, 2, 4\] \(every other one\) must name 3 of the teacher's blocks 0-3"):
        initialise_from_teacher(deep, teacher, None, "stages.distill")
    cnn = builder("text_cnn", text_data, dim=16).build(text_data.input_shape, 3)
    with pytest.raises(PipelineError, match=r"^stages.distill.init: initialising from the teacher needs encoder blocks"):
        initialise_from_teacher(cnn, teacher, None, "stages.distill")


def test_hidden_state_loss_is_zero_for_aligned_states_and_adds_for_opposite_ones():
    from techniques.distillation import distillation_loss

    loss = distillation_loss("kl", 0.5, 2.0, classes=2, hidden_weight=3.0)
    packed = np.array([[0, 1.0, -1.0, 0.5, 0.5]], np.float32)  # label, teacher logits, teacher state
    aligned = np.array([[1.0, -1.0, 2.0, 2.0]], np.float32)  # the same logits, a state in the same direction
    opposite = np.array([[1.0, -1.0, -2.0, -2.0]], np.float32)
    base = float(distillation_loss("kl", 0.5, 2.0)(packed[:, :3], aligned[:, :2])[0])
    assert float(loss(packed, aligned)[0]) == pytest.approx(base, abs=1e-5)
    assert float(loss(packed, opposite)[0]) == pytest.approx(base + 3.0 * 2, abs=1e-5)


def added_loss(model, x):
    """The losses a training model adds to its compiled one (TinyBERT's), for inputs `x`."""
    model(x, training=False)
    return float(sum(model.losses))


def test_tinybert_losses_vanish_for_the_teachers_own_blocks_and_mismatched_models_are_named(text_data, text_teacher):
    from techniques.intermediate import check_models, uniform_mapping, with_intermediate_losses
    from techniques.student_init import initialise_from_teacher

    teacher, _ = text_teacher  # 4 blocks, dim 16, 2 heads
    assert uniform_mapping(2, 4) == [1, 3] and uniform_mapping(3, 6) == [1, 3, 5] and uniform_mapping(4, 4) == [0, 1, 2, 3]
    x = text_data.x_train[:16]
    copy = builder("transformer", text_data, blocks=2, dim=16, heads=2, ff=32).build(text_data.input_shape, 3)
    initialise_from_teacher(copy, teacher, [0, 1], "stages.distill")
    assert added_loss(with_intermediate_losses(copy, copy, teacher, [0, 1], 1.0, 1.0), x) == pytest.approx(0, abs=1e-10)
    assert added_loss(with_intermediate_losses(copy, copy, teacher, [1, 3], 1.0, 1.0), x) > 0.01
    one_head = builder("transformer", text_data, blocks=2, dim=16, heads=1, ff=32).build(text_data.input_shape, 3)
    with pytest.raises(PipelineError, match=r"^stages.distill.attention_weight: attention maps are matched head by head, but the student's blocks have \[1, 1\] heads and the teacher's matched blocks \[2, 2\]"):
        check_models(one_head, teacher, [1, 3], True, "stages.distill")
    cnn = builder("text_cnn", text_data, dim=16).build(text_data.input_shape, 3)
    with pytest.raises(PipelineError, match=r"^stages.distill.intermediate_weight: matching hidden states needs encoder blocks"):
        check_models(cnn, teacher, [], False, "stages.distill")


@pytest.mark.slow
def test_tinybert_trains_a_narrower_student_through_projections_it_does_not_keep(text_data, text_teacher):
    import tf_keras as keras

    from techniques.intermediate import with_intermediate_losses

    teacher, _ = text_teacher
    x = text_data.x_train[:16]
    narrow = builder("transformer", text_data, blocks=2, dim=8, heads=2, ff=16).build(text_data.input_shape, 3)
    training = with_intermediate_losses(narrow, narrow, teacher, [1, 3], 1.0, 1.0)
    assert {layer.name for layer in training.layers} >= {"project_embeddings", "project_block0", "project_block1"}
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    before = added_loss(training, x)
    training.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    training.fit(x, text_data.y_train[:16], epochs=5, batch_size=16, verbose=0)
    assert added_loss(training, x) < 0.9 * before  # the student's states moved towards the teacher's
    assert all(np.array_equal(a, b) for a, b in zip(teacher_weights, teacher.get_weights()))  # the teacher stays frozen
    assert not any(layer.name.startswith("project_") for layer in narrow.layers)  # the student ships without projections


@pytest.mark.slow
def test_tinybert_distillation_into_a_narrower_student_by_the_stage(tmp_path, text_data, text_teacher):
    from stages.distill import DistillParams, DistillStage
    from tests._tiny import context

    teacher, path = text_teacher
    student = {"name": "transformer", "blocks": 2, "dim": 8, "heads": 2, "ff": 16}
    params = DistillParams(teacher=str(path), student=student, intermediate_weight=1.0, attention_weight=1.0, epochs=8,
                           learning_rate=0.005, temperature=2.0, alpha=0.5)
    out = DistillStage(params).run(None, context(tmp_path, "distill", 0, data=text_data))
    model = out.load_keras()
    assert out.metadata["intermediate_blocks"] == [1, 3]
    assert not any(layer.name.startswith("project_") for layer in model.layers) and model.count_params() < teacher.count_params() / 2
    assert np.mean(model.predict(text_data.x_test, verbose=0).argmax(-1) == text_data.y_test) > 0.5  # chance is a third


@pytest.mark.slow
def test_distilbert_student_from_a_teacher_file(tmp_path, text_data, text_teacher):
    from stages.distill import DistillParams, DistillStage
    from tests._tiny import context

    teacher, path = text_teacher
    student = {"name": "transformer", "blocks": 2, "dim": 16, "heads": 2, "ff": 32}
    params = DistillParams(teacher=str(path), student=student, init="teacher", hidden_weight=1.0, epochs=3, learning_rate=0.001)
    stage = DistillStage(params)
    stage.check_data(text_data, "stages.distill")
    out = stage.run(None, context(tmp_path, "distill", 0, data=text_data))
    model = out.load_keras()
    assert out.metadata["initialised_from_blocks"] == [0, 2] and model.count_params() < teacher.count_params()
    assert [layer.name for layer in model.layers][-1] == "classifier" and model.output_shape == (None, 3)  # the view is not saved
    def accuracy(keras_model):
        return np.mean(keras_model.predict(text_data.x_test, verbose=0).argmax(-1) == text_data.y_test)

    # Three epochs bring a student that starts from a trained teacher to the teacher's accuracy, within
    # two of the twelve test texts (a student from scratch stays near chance, a third, after three epochs).
    assert accuracy(model) >= accuracy(teacher) - 2 / len(text_data.y_test) and accuracy(model) > 0.5
    too_wide = {**student, "dim": 32, "heads": 2}
    with pytest.raises(PipelineError, match=r"^stages.distill.hidden_weight: the student's pooled hidden state has 32 values and the teacher's 16"):
        DistillStage(DistillParams(teacher=str(path), student=too_wide, hidden_weight=1.0, epochs=1)).run(
            None, context(tmp_path, "distill", 1, data=text_data)
        )


@pytest.mark.slow
def test_distilbert_int8_recipe_on_a_text_folder(tmp_path):
    root = write_text_folder(tmp_path / "texts", per_class=40)
    cfg = compose_config(
        tmp_path, "recipe=distilbert_int8", *TINY, "data=text_folder", f"data.path={root}", "data.sequence_length=32",
        "model.dim=16", "model.ff=32", "stages.train.epochs=12", "stages.train.learning_rate=0.003", "stages.distill.epochs=6",
    )
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="distilbert_int8"))
    rows = {row.stage: row.metrics for row in result.rows}
    assert rows["distill"]["params"] < 0.6 * rows["train"]["params"]  # half the blocks, the same embeddings
    assert rows["export"]["accuracy"] >= rows["train"]["accuracy"] - 0.1
    meta = json.loads((result.run_dir / "export" / "model.json").read_text())
    assert [step["stage"] for step in meta["lineage"]] == ["train", "distill", "prune", "quantize"]
    assert meta["lineage"][1]["facts"]["initialised_from_blocks"] == [0, 2]
    assert meta["io"]["inputs"][0]["dtype"] == "int32" and meta["quantization"]["fully_integer"] is True


# --- attention-head pruning -------------------------------------------------------------------------


def test_removing_heads_gives_the_masked_models_predictions_and_a_silenced_head_goes_first(text_data, text_teacher):
    from techniques.heads import attention_layers, choose_heads, head_counts, head_importance, output_kernel, rebuild_heads

    teacher, _ = text_teacher  # 4 blocks of 2 heads
    model = builder("transformer", text_data, blocks=2, dim=16, heads=4, ff=32).build(text_data.input_shape, 3)
    silenced = output_kernel(model.get_layer("block1_attention"))
    silenced.assign(np.concatenate([silenced.numpy()[:2], np.zeros_like(silenced.numpy()[2:3]), silenced.numpy()[3:]]))
    importance = head_importance(model, text_data.x_val, text_data.y_val)
    assert importance["block1_attention"][2] == 0 and (importance["block0_attention"] > 0).all()
    kept = choose_heads(head_counts(model, 0.5, "stages.channel_prune"), importance)
    assert len(kept) == 2 and all(len(heads) == 2 for heads in kept.values()) and 2 not in kept["block1_attention"]
    smaller = rebuild_heads(model, kept)
    for layer in attention_layers(model):  # the reference: the removed heads' output slices zeroed in place
        kernel = output_kernel(layer)
        kernel.assign(kernel.numpy() * np.isin(np.arange(4), kept[layer.name])[:, None, None])
    assert smaller.get_layer("block0_attention").get_config()["num_heads"] == 2
    assert smaller.count_params() < model.count_params() - 500
    np.testing.assert_allclose(smaller.predict(text_data.x_val, verbose=0), model.predict(text_data.x_val, verbose=0), atol=1e-5)
    assert head_counts(teacher, 0.25, "w") == {}  # a quarter of two heads rounds to none
    with pytest.raises(PipelineError, match=r"^stages.channel_prune.heads: removing 90% of block0_attention's 2 heads leaves none; lower it"):
        head_counts(teacher, 0.9, "stages.channel_prune")


@pytest.mark.slow
def test_channel_prune_removes_heads_and_units_of_a_transformer_and_plans_them(tmp_path, text_data, text_teacher):
    from pipeline.plugin.artifact import ModelArtifact, ModelFormat
    from pipeline.run.layer_plan import LayerPlan
    from stages.channel_prune import ChannelPruneParams, ChannelPruneStage
    from tests._tiny import context

    teacher, path = text_teacher
    stage = ChannelPruneStage(ChannelPruneParams(share=0.5, heads=0.5, epochs=0))
    plan = stage.layer_plan(teacher, LayerPlan([]), "stages.channel_prune")
    assert plan.actions["block3_attention"].why == "2 -> 1 heads" and plan.actions["block0_ffn_in"].why == "32 -> 16 channels"
    assert "and 50% of each attention layer's heads" in plan.summary
    assert plan.model.get_layer("block2_attention").get_config()["num_heads"] == 1
    out = stage.run(ModelArtifact(path, ModelFormat.KERAS, "file"), context(tmp_path, "channel_prune", 1, data=text_data))
    model = out.load_keras()
    assert out.metadata["kept_heads"] == {f"block{i}_attention": 1 for i in range(4)}
    assert all(model.get_layer(f"block{i}_attention").get_config()["num_heads"] == 1 for i in range(4))
    assert model.count_params() < teacher.count_params() * 0.8 and model.inputs[0].dtype.name == "int32"
    with pytest.raises(PipelineError, match=r"^stages.channel_prune.heads: the model has no MultiHeadAttention layer"):
        cnn = builder("text_cnn", text_data, dim=16).build(text_data.input_shape, 3)
        ChannelPruneStage(ChannelPruneParams(heads=0.5)).layer_plan(cnn, LayerPlan([]), "stages.channel_prune")


@pytest.mark.slow
@pytest.mark.parametrize("recipe, stage", [("qat_int8", "qat"), ("channel_int8", "channel_prune")])
def test_qat_and_channel_pruning_on_a_transformer_keep_int32_ids(tmp_path, recipe, stage):
    root = write_text_folder(tmp_path / "texts", per_class=40)
    cfg = compose_config(
        tmp_path, f"recipe={recipe}", *(o for o in TINY if not o.startswith("stages.prune")), "model=transformer",
        "model.blocks=1", "model.dim=16", "model.ff=32", "data=text_folder", f"data.path={root}", "data.sequence_length=32",
        "stages.train.epochs=12", "stages.train.learning_rate=0.003", f"stages.{stage}.epochs=2",
    )
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe=recipe))
    rows = {row.stage: row.metrics for row in result.rows}
    meta = json.loads((result.run_dir / "export" / "model.json").read_text())
    assert meta["io"]["inputs"][0]["dtype"] == "int32" and meta["io"]["outputs"][0]["dtype"] == "int8"
    assert meta["quantization"]["fully_integer"] is True
    assert rows["export"]["accuracy"] >= rows["train"]["accuracy"] - 0.1
    if stage == "channel_prune":  # the feed-forward layer lost half its units
        assert rows["channel_prune"]["params"] < rows["train"]["params"] - 500


def test_predict_reads_raw_text_as_the_sources_do(tmp_path):
    from pipeline.commands.raw_inputs import read
    from pipeline.data.preprocessing import Preprocessing

    root = write_text_folder(tmp_path / "texts", per_class=5)
    tokenizer = fit([path.read_text() for path in root.rglob("*.txt")], TokenizerParams(sequence_length=12))
    classes = sorted(TOPICS)
    inputs = read([root], Preprocessing(), (12,), classes, tokenizer)
    assert inputs.x.dtype == np.int32 and inputs.x.shape == (15, 12) and sorted(set(inputs.y.tolist())) == [0, 1, 2]
    first = sorted((root / "business").glob("*.txt"))[0]
    assert np.array_equal(inputs.x[0], tokenizer.encode([first.read_text()])[0][0])

    table = write_text_csv(tmp_path / "reviews.csv", per_class=5)
    described = Preprocessing(features=("review",), label="sentiment")
    assert np.array_equal(read([table], described, (12,), classes, tokenizer).y, inputs.y)
    with pytest.raises(PipelineError, match=r"reviews.csv: the model was trained on a folder of .txt files; give .txt files or a folder of them$"):
        read([table], Preprocessing(), (12,), classes, tokenizer)
    (root / "sport" / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(PipelineError, match=r"^/.*bad.txt is not UTF-8 text \(byte 0xff at position 0\)"):
        read([root], Preprocessing(), (12,), classes, tokenizer)
