"""Rebuild the face models in this folder from the mediapipe 0.10.21 wheel (a maintainer's tool, not run by the app).

    pip install tflite==2.18.0                        # the TFLite flatbuffer schema, for reading the landmark model
    pip download mediapipe==0.10.21 --no-deps --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_28_x86_64 -d /tmp/mp
    python live/face_models/build_face_models.py /tmp/mp/mediapipe-0.10.21-*.whl

Writes, next to this script (byte for byte the same on every run):
- face_detection_short_range.tflite, face_detection_full_range_sparse.tflite: copied unchanged.
- face_landmarks_detector.tflite: the mesh of the Tasks FaceLandmarker's bundle (live/face_tasks.py zips it with
  the short-range detector, as legacy FaceMesh used, when it loads).  It is
  face_landmark.tflite (468 landmarks) with two operations appended, because the Tasks graph decodes its
  landmark tensor as 478 points (the newer model's 468 + 10 iris points) and would misread 1404 values as
  478 points of 2 values each: the landmark output becomes concat(out, out[..., :30]), i.e. the 468 landmarks
  followed by copies of the first 10 (inside the face, so the tracking box in video mode is unchanged).
  Callers keep the first 468.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np

HERE = Path(__file__).resolve().parent
WHEEL_FILES = {  # path inside the mediapipe 0.10.21 wheel (manylinux_2_28_x86_64, cp311): sha256
    "mediapipe/modules/face_detection/face_detection_short_range.tflite":
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite":
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    "mediapipe/modules/face_landmark/face_landmark.tflite":
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
}
MESH_LANDMARKS, TASKS_LANDMARKS = 468, 478


def schema(table: str):
    """The generated flatbuffer module of one TFLite schema table (tflite.Model is the class; we want the module)."""
    return importlib.import_module(f"tflite.{table}")


def read_wheel(wheel: Path) -> dict[str, bytes]:
    """The three model files, checked against their known sha256."""
    files = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, expected in WHEEL_FILES.items():
            data = archive.read(name)
            found = hashlib.sha256(data).hexdigest()
            if found != expected:
                raise SystemExit(f"{name} in {wheel} has sha256 {found}, expected {expected}: not mediapipe 0.10.21's")
            files[name.rsplit("/", 1)[1]] = data
    return files


def _vector(builder: flatbuffers.Builder, values, kind: str) -> int:
    """A vector of int32 ("i") or uint8 ("B") values; byte vectors are 16-byte aligned (weights are read in place)."""
    if kind == "B":
        data = bytes(values)
        builder.StartVector(1, len(data), 16)
        builder.head = builder.Head() - len(data)
        builder.Bytes[builder.Head():builder.Head() + len(data)] = data
        return builder.EndVector()
    values = list(values)
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependInt32(int(value))
    return builder.EndVector()


def _offsets(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _copy_options(builder: flatbuffers.Builder, op) -> int:
    """The builtin options table of an operator of face_landmark.tflite (the kinds it uses), re-emitted."""
    kind = op.BuiltinOptionsType()
    table = op.BuiltinOptions()
    names = {1: "Conv2DOptions", 2: "DepthwiseConv2DOptions", 5: "Pool2DOptions", 11: "AddOptions"}
    if kind not in names:
        raise SystemExit(f"unexpected builtin options type {kind} in the landmark model")
    module = schema(names[kind])
    options = getattr(module, names[kind])()
    options.Init(table.Bytes, table.Pos)
    fields = {
        "Conv2DOptions": ["Padding", "StrideW", "StrideH", "FusedActivationFunction", "DilationWFactor", "DilationHFactor"],
        "DepthwiseConv2DOptions": ["Padding", "StrideW", "StrideH", "DepthMultiplier", "FusedActivationFunction",
                                   "DilationWFactor", "DilationHFactor"],
        "Pool2DOptions": ["Padding", "StrideW", "StrideH", "FilterWidth", "FilterHeight", "FusedActivationFunction"],
        "AddOptions": ["FusedActivationFunction", "PotScaleInt16"],
    }[names[kind]]
    getattr(module, "Start")(builder)
    for field in fields:
        getattr(module, f"Add{field}")(builder, getattr(options, field)())
    return getattr(module, "End")(builder)


def landmarks_for_tasks(model_bytes: bytes) -> bytes:
    """face_landmark.tflite with its landmark output widened from 468x3 to 478x3 values (see the module docstring)."""
    tflite = importlib.import_module("tflite")
    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    graph = model.Subgraphs(0)
    landmarks_out, flag_out = graph.Outputs(0), graph.Outputs(1)
    if list(graph.Tensors(landmarks_out).ShapeAsNumpy()) != [1, 1, 1, 3 * MESH_LANDMARKS]:
        raise SystemExit("the landmark model's first output is not 1x1x1x1404: not face_landmark.tflite")
    extra = 3 * (TASKS_LANDMARKS - MESH_LANDMARKS)
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    B, T, O, OC, SG, M, MD = (schema(n) for n in ("Buffer", "Tensor", "Operator", "OperatorCode", "SubGraph", "Model",
                                                   "Metadata"))

    # Buffers: the originals, then the SLICE op's begin and size.
    buffer_data = [model.Buffers(i).DataAsNumpy().tobytes() if model.Buffers(i).DataLength() else b""
                   for i in range(model.BuffersLength())]
    begin_buffer, size_buffer = len(buffer_data), len(buffer_data) + 1
    buffer_data += [np.array([0, 0, 0, 0], "<i4").tobytes(), np.array([1, 1, 1, extra], "<i4").tobytes()]
    buffers = []
    for data in buffer_data:
        data_offset = _vector(builder, data, "B") if data else None
        B.Start(builder)
        if data_offset is not None:
            B.AddData(builder, data_offset)
        buffers.append(B.End(builder))

    # Tensors: the originals, then begin, size, the 30 copied values and the widened output.
    specs = []
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        specs.append((tensor.Name(), list(tensor.ShapeAsNumpy()), tensor.Type(), tensor.Buffer()))
    begin, size, copied, widened = range(len(specs), len(specs) + 4)
    float32, int32 = 0, 2
    specs += [(b"landmarks_copy_begin", [4], int32, begin_buffer), (b"landmarks_copy_size", [4], int32, size_buffer),
              (b"landmarks_copy", [1, 1, 1, extra], float32, 0),
              (b"landmarks_478", [1, 1, 1, 3 * TASKS_LANDMARKS], float32, 0)]
    tensors = []
    for name, shape, dtype, buffer in specs:
        name_offset, shape_offset = builder.CreateString(name), _vector(builder, shape, "i")
        T.Start(builder)
        T.AddShape(builder, shape_offset)
        T.AddType(builder, dtype)
        T.AddBuffer(builder, buffer)
        T.AddName(builder, name_offset)
        tensors.append(T.End(builder))

    # Operator codes: the originals, then SLICE and CONCATENATION.
    codes = [(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).Version())
             for i in range(model.OperatorCodesLength())]
    slice_code, concat_code = len(codes), len(codes) + 1
    codes += [(65, 1), (2, 1)]
    code_offsets = []
    for builtin, version in codes:
        OC.Start(builder)
        OC.AddDeprecatedBuiltinCode(builder, min(builtin, 127))
        OC.AddBuiltinCode(builder, builtin)
        OC.AddVersion(builder, version)
        code_offsets.append(OC.End(builder))

    # Operators: the originals, then SLICE(out, begin, size) and CONCATENATION(out, copy; axis 3).
    operators = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op.CustomOptionsLength() or op.IntermediatesLength() or op.MutatingVariableInputsLength():
            raise SystemExit("unexpected operator fields in the landmark model")
        options = _copy_options(builder, op) if op.BuiltinOptionsType() else None
        inputs, outputs = _vector(builder, op.InputsAsNumpy(), "i"), _vector(builder, op.OutputsAsNumpy(), "i")
        O.Start(builder)
        O.AddOpcodeIndex(builder, op.OpcodeIndex())
        O.AddInputs(builder, inputs)
        O.AddOutputs(builder, outputs)
        if options is not None:
            O.AddBuiltinOptionsType(builder, op.BuiltinOptionsType())
            O.AddBuiltinOptions(builder, options)
        operators.append(O.End(builder))
    CO = schema("ConcatenationOptions")
    CO.Start(builder)
    CO.AddAxis(builder, 3)
    concat_options = CO.End(builder)
    for code, inputs, outputs, options in ((slice_code, [landmarks_out, begin, size], [copied], None),
                                           (concat_code, [landmarks_out, copied], [widened], concat_options)):
        inputs_offset, outputs_offset = _vector(builder, inputs, "i"), _vector(builder, outputs, "i")
        O.Start(builder)
        O.AddOpcodeIndex(builder, code)
        O.AddInputs(builder, inputs_offset)
        O.AddOutputs(builder, outputs_offset)
        if options is not None:
            O.AddBuiltinOptionsType(builder, 10)  # BuiltinOptions.ConcatenationOptions
            O.AddBuiltinOptions(builder, options)
        operators.append(O.End(builder))

    tensors_offset, operators_offset = _offsets(builder, tensors), _offsets(builder, operators)
    inputs_offset = _vector(builder, graph.InputsAsNumpy(), "i")
    outputs_offset = _vector(builder, [widened, flag_out], "i")
    graph_name = builder.CreateString(graph.Name())
    SG.Start(builder)
    SG.AddTensors(builder, tensors_offset)
    SG.AddInputs(builder, inputs_offset)
    SG.AddOutputs(builder, outputs_offset)
    SG.AddOperators(builder, operators_offset)
    SG.AddName(builder, graph_name)
    graph_offset = SG.End(builder)

    metadata = []
    for i in range(model.MetadataLength()):
        name = builder.CreateString(model.Metadata(i).Name())
        MD.Start(builder)
        MD.AddName(builder, name)
        MD.AddBuffer(builder, model.Metadata(i).Buffer())
        metadata.append(MD.End(builder))
    codes_offset, graphs_offset = _offsets(builder, code_offsets), _offsets(builder, [graph_offset])
    buffers_offset, metadata_offset = _offsets(builder, buffers), _offsets(builder, metadata)
    metadata_buffer = _vector(builder, model.MetadataBufferAsNumpy(), "i")
    description = builder.CreateString(model.Description())
    M.Start(builder)
    M.AddVersion(builder, model.Version())
    M.AddOperatorCodes(builder, codes_offset)
    M.AddSubgraphs(builder, graphs_offset)
    M.AddDescription(builder, description)
    M.AddBuffers(builder, buffers_offset)
    M.AddMetadataBuffer(builder, metadata_buffer)
    M.AddMetadata(builder, metadata_offset)
    builder.Finish(M.End(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print(__doc__, file=sys.stderr)
        return 2
    files = read_wheel(Path(argv[0]))
    outputs = {
        "face_detection_short_range.tflite": files["face_detection_short_range.tflite"],
        "face_detection_full_range_sparse.tflite": files["face_detection_full_range_sparse.tflite"],
        "face_landmarks_detector.tflite": landmarks_for_tasks(files["face_landmark.tflite"]),
    }
    for name, data in outputs.items():
        (HERE / name).write_bytes(data)
        print(f"{hashlib.sha256(data).hexdigest()}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
