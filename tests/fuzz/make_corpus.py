#!/usr/bin/env python3
"""Writes the tiny seed corpus for the fuzz targets into tests/fuzz/corpus*/ (standard library only).

safetensors seeds follow the reference library's layout (header padded with spaces to 8 bytes,
tensors ordered by dtype size then name); npy seeds are v1.0 files; config seeds are JSON.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes) already in file order."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def npy(descr, shape, raw, fortran=False):
    shp = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", shp)
    d += " " * ((64 - (10 + len(d) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode() + raw


def write(folder, name, data):
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    with open(os.path.join(HERE, folder, name), "wb") as f:
        f.write(data)


f32 = struct.pack("<6f", 0.5, -1.0, 2.0, 3.25, -0.125, 1e-3)
write("corpus", "basic.safetensors",
      safetensors([("w", "F32", [2, 3], f32)], {"format": "pt"}))
write("corpus", "mixed.safetensors",
      safetensors([("c", "I64", [1], struct.pack("<q", -7)),
                   ("a", "F32", [1], struct.pack("<f", 1.0)),
                   ("b", "BF16", [2], b"\x80\x3f\x00\x40"),
                   ("e", "F16", [0], b""),
                   ("m", "BOOL", [3], b"\x01\x00\x01"),
                   ("u", "U8", [2], b"\xff\x00")]))
write("corpus", "empty.safetensors", safetensors([]))
write("corpus", "scalar_unpadded.safetensors", safetensors([("s", "I32", [], b"\x2a\x00\x00\x00")], pad=False))
overlap = (b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
           b'"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}')
write("corpus", "overlap.safetensors", struct.pack("<Q", len(overlap)) + overlap + b"\x00" * 6)

write("corpus_npy", "f4.npy", npy("<f4", [2, 3], f32))
write("corpus_npy", "i8.npy", npy("<i8", [2], struct.pack("<2q", 1, -2)))
write("corpus_npy", "i4_scalar.npy", npy("<i4", [], struct.pack("<i", 5)))
write("corpus_npy", "fortran.npy", npy("<f4", [3, 2], f32, fortran=True))

orca = {"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 32000,
        "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 224, "max_position_embeddings": 512,
        "model_type": "mistral", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 32, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "vocab_size": 1000}
new = dict(orca)
del new["rope_theta"], new["torch_dtype"]
new.update({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}, "rope_scaling": None,
            "sliding_window": None, "head_dim": None, "eos_token_id": [2, 32000], "dtype": "bfloat16"})
write("corpus_config", "old.json", json.dumps(orca).encode())
write("corpus_config", "new.json", json.dumps(new).encode())
