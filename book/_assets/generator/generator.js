/*
 * mnistdiff's live generator: the course's own distilled student (4 network calls a digit) and its teacher (the
 * class-conditional latent model of chapter 7, guided DDIM at 4-64 steps), run in the reader's browser by the
 * vendored onnxruntime-web (WebAssembly, one thread). Nothing is fetched from outside the book.
 *
 * The sampler mirrors mnistdiff.export.onnx_sample line for line (tests/test_book.py runs both on the same noise):
 * for each timestep t (high to low) x̂_0 comes from the network, clipped to ±c
 *   student (v̂):  x̂_0 = √ᾱ_t·z − √(1 − ᾱ_t)·v̂
 *   teacher (ε̂):  ε̃ = ε(∅) + w·(ε(y) − ε(∅)),  x̂_0 = (z − √(1 − ᾱ_t)·ε̃)/√ᾱ_t
 * then ε̂ = (z − √ᾱ_t·x̂_0)/√(1 − ᾱ_t) and DDIM (η = 0) to the next timestep, z = √ᾱ_next·x̂_0 + √(1 − ᾱ_next)·ε̂
 * (ᾱ = 1 after the last); the digit is decoder(z). The pixel DDPM of chapter 2 draws unconditional digits straight
 * in pixels by DPM-Solver++(2M) SDE on Karras σ (mnistdiff.export.onnx_pixel_sample, mnistdiff.solvers): at points
 * (a_i, b_i) with λ = log(a/b), x̂_0 = clip((x − b_i·ε̂)/a_i), D = (1 + 1/2r)·x̂_0 − (1/2r)·x̂_0,prev, and
 *   x ← (b_{i+1}/b_i)·e^{−h}·x − a_{i+1}·(e^{−2h} − 1)·D + b_{i+1}·√(1 − e^{−2h})·z_i,   h = λ_{i+1} − λ_i,
 * the last step landing on x̂_0. A page places it with <div class="mnistdiff-generator"></div> (data-model,
 * data-steps, data-guidance and data-digit preset its controls).
 */
(function () {
  "use strict";
  const BASE = new URL(".", document.currentScript.src).href; // …/_static/generator/
  const ORT_DIR = new URL("../onnxruntime-web/", BASE).href;
  const MODELS = new URL("models/", BASE).href;
  const SERVE = "python -m http.server -d book/_build/html";
  const COUNT = 10; // digits per press
  const MAX_FRAMES = 9; // x̂_0 frames shown (every k-th step, and the last)

  // ---- the runtime: onnxruntime-web, the exported graphs and sampler.json, loaded once on first use ----------
  let runtime = null;

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error("could not load " + src));
      document.head.appendChild(s);
    });
  }

  async function fetchOK(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r;
  }

  async function fetchJSON(url) {
    return (await fetchOK(url)).json();
  }

  /** The bytes of a gzipped file (the graphs and the WebAssembly binary are stored so, a fifth to a quarter the
   * size), inflated by the browser's DecompressionStream; as they are if the server already inflated them. */
  async function fetchGzipped(url) {
    const bytes = new Uint8Array(await (await fetchOK(url)).arrayBuffer());
    if (bytes[0] !== 0x1f || bytes[1] !== 0x8b) return bytes;
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  function load() {
    if (!runtime) {
      runtime = (async () => {
        if (!window.ort) await loadScript(ORT_DIR + "ort.wasm.min.js");
        const ort = window.ort;
        ort.env.wasm.wasmPaths = ORT_DIR;
        ort.env.wasm.wasmBinary = (await fetchGzipped(ORT_DIR + "ort-wasm-simd-threaded.wasm.gz")).buffer;
        ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so no special server headers
        const constants = await fetchJSON(MODELS + "sampler.json");
        const rt = { ort, constants, sessions: {} };
        for (const name of ["student", "decoder"]) await openSession(rt, name);
        return rt;
      })();
      runtime.catch(() => { runtime = null; });
    }
    return runtime;
  }

  /** A network's session, opened on first use (the teacher's 3.9 MB and the pixel model's 2.4 MB only when a
   * reader asks for them). */
  async function openSession(rt, name) {
    if (!rt.sessions[name]) {
      const bytes = await fetchGzipped(MODELS + rt.constants[name].file);
      rt.sessions[name] = await rt.ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    }
    return rt.sessions[name];
  }

  // ---- the sampler ----------------------------------------------------------------------------------------------
  let evaluations = 0; // network evaluations, one per latent a network is run on (the decoder's left out)

  async function run(rt, name, feeds) {
    const session = await openSession(rt, name);
    const out = await session.run(feeds);
    return out[session.outputNames[0]].data;
  }

  function int64(rt, values) {
    return new rt.ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(v)), [values.length]);
  }

  /** The network's output (Float32Array, B·D) for latents x (Float64Array, B·D) at timestep t, digits y. */
  async function network(rt, name, x, t, y) {
    const dims = [y.length].concat(rt.constants.latent_shape);
    const z = new rt.ort.Tensor("float32", Float32Array.from(x), dims);
    evaluations += y.length;
    return run(rt, name, { z: z, t: int64(rt, y.map(() => t)), y: int64(rt, y) });
  }

  /** ε̃ = ε(∅) + w·(ε(y) − ε(∅)): one call where w is 0 or 1, else one batch of 2B (as guided_eps does). */
  async function guidedEps(rt, x, t, y, w) {
    const nul = y.map(() => rt.constants.null_label);
    if (w === 0 || w === 1) return network(rt, "teacher", x, t, w === 0 ? nul : y);
    const both = new Float64Array(2 * x.length);
    both.set(x);
    both.set(x, x.length);
    const out = await network(rt, "teacher", both, t, y.concat(nul));
    const eps = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) eps[i] = out[x.length + i] + w * (out[i] - out[x.length + i]);
    return eps;
  }

  async function predictX0(rt, opts, x, t, a) {
    const c = rt.constants[opts.model];
    const x0 = new Float64Array(x.length);
    const sa = Math.sqrt(a), s1a = Math.sqrt(1 - a);
    if (c.prediction === "v") {
      const v = await network(rt, opts.model, x, t, opts.digits);
      for (let i = 0; i < x.length; i++) x0[i] = sa * x[i] - s1a * v[i];
    } else {
      const eps = await guidedEps(rt, x, t, opts.digits, opts.guidance);
      for (let i = 0; i < x.length; i++) x0[i] = (x[i] - s1a * eps[i]) / sa;
    }
    for (let i = 0; i < x.length; i++) x0[i] = Math.min(c.clip, Math.max(-c.clip, x0[i]));
    return x0;
  }

  async function decode(rt, x, batch) {
    const dims = [batch].concat(rt.constants.latent_shape);
    return run(rt, "decoder", { z: new rt.ort.Tensor("float32", Float32Array.from(x), dims) });
  }

  /** The timesteps and ᾱ of a run: the student's own, or the teacher's DDIM timesteps for `steps`. */
  function schedule(rt, opts) {
    const c = rt.constants[opts.model];
    if (opts.model === "student") return { timesteps: c.timesteps, abars: c.alphas_cumprod.slice() };
    const timesteps = c.steps[String(opts.steps)];
    if (!timesteps) throw new Error("the teacher samples with " + Object.keys(c.steps).join(", ") + " steps");
    return { timesteps: timesteps, abars: timesteps.map((t) => c.alphas_cumprod[t]) };
  }

  // ---- the pixel DDPM: DPM-Solver++(2M) SDE on the points sampler.json holds ---------------------------------------
  /** ε̂ (Float32Array, B·D) of the pixel network for images x (Float64Array, B·D) at the real timestep t. */
  async function pixelEps(rt, x, t, batch) {
    const dims = [batch].concat(rt.constants.pixel.shape);
    evaluations += batch;
    return run(rt, "pixel", { x: new rt.ort.Tensor("float32", Float32Array.from(x), dims),
                              t: new rt.ort.Tensor("float32", new Float32Array(batch).fill(t), [batch]) });
  }

  /** Unconditional digits in pixels: opts.steps points, from noise (x_T then each step's z: steps·B·D numbers). */
  async function samplePixel(rt, o) {
    const c = rt.constants.pixel, pts = c.steps[String(o.steps)];
    if (!pts) throw new Error("the pixel model samples with " + Object.keys(c.steps).join(", ") + " steps");
    const batch = o.count, d = c.shape.reduce((p, q) => p * q, 1), n = batch * d, steps = pts.times.length;
    const noise = o.noise ? Float64Array.from(o.noise) : gaussian(steps * n, o.seed);
    if (noise.length !== steps * n) throw new Error("noise must hold " + steps * n + " numbers (x_T, then one z a step)");
    const a = pts.a, b = pts.b, lambda = (i) => Math.log(a[i]) - Math.log(b[i]);
    const start = performance.now(), evaluations0 = evaluations, frames = [];
    let x = noise.slice(0, n), prev = null, prevH = Infinity;
    for (let i = 0; i < steps; i++) {
      const eps = await pixelEps(rt, x, pts.times[i], batch);
      const x0 = new Float64Array(n);
      for (let j = 0; j < n; j++) x0[j] = Math.min(c.clip, Math.max(-c.clip, (x[j] - b[i] * eps[j]) / a[i]));
      if (o.frames) frames.push({ t: Math.floor(pts.times[i]) + 1, images: Float32Array.from(x0) });
      if (b[i + 1] === 0) { x = x0; break; }
      const h = lambda(i + 1) - lambda(i), k = prev ? h / (2 * prevH) : 0; // k = 1/2r
      const kept = (b[i + 1] / b[i]) * Math.exp(-h), drift = -a[i + 1] * Math.expm1(-2 * h);
      const fresh = b[i + 1] * Math.sqrt(-Math.expm1(-2 * h)), z = noise.subarray((i + 1) * n, (i + 2) * n);
      const next = new Float64Array(n);
      for (let j = 0; j < n; j++) next[j] = kept * x[j] + drift * ((1 + k) * x0[j] - (prev ? k * prev[j] : 0)) + fresh * z[j];
      prev = x0; prevH = h; x = next;
    }
    const nfe = (evaluations - evaluations0) / batch;
    return { images: Float32Array.from(x), frames: frames, nfe: nfe, ms: performance.now() - start };
  }

  /**
   * Draw digits. opts: {model: "student"|"teacher"|"pixel", digits: [0-9, …] (the pixel model: count), steps,
   * guidance, noise (B·c·h·w numbers; the pixel model: steps·B·32·32, x_T then each step's z) or seed, frames (x̂_0
   * at each step)}. Returns {images: Float32Array (B·32·32, in [−1, 1]), frames: [{t, images}], nfe (network
   * evaluations per digit: 1 a step for the student and the pixel model, 2 for the guided teacher), ms}.
   */
  async function sample(opts) {
    const rt = await load();
    const o = Object.assign({ model: "student", steps: 4, frames: false, seed: 0 }, opts);
    if (o.model === "pixel") return samplePixel(rt, Object.assign({ count: (o.digits || []).length || 1 }, o));
    if (o.guidance === undefined) o.guidance = rt.constants[o.model].guidance;
    const d = rt.constants.latent_shape.reduce((p, q) => p * q, 1);
    const x0noise = o.noise ? Float64Array.from(o.noise) : gaussian(o.digits.length * d, o.seed);
    if (x0noise.length !== o.digits.length * d) throw new Error("noise must hold " + o.digits.length * d + " numbers");
    const { timesteps, abars } = schedule(rt, o);
    abars.push(1.0);
    const start = performance.now(), evaluations0 = evaluations;
    let x = x0noise;
    const frames = [];
    for (let i = 0; i < timesteps.length; i++) {
      const a = abars[i], an = abars[i + 1];
      const x0 = await predictX0(rt, o, x, timesteps[i], a);
      const next = new Float64Array(x.length);
      for (let j = 0; j < x.length; j++) {
        const eps = (x[j] - Math.sqrt(a) * x0[j]) / Math.sqrt(1 - a);
        next[j] = Math.sqrt(an) * x0[j] + Math.sqrt(1 - an) * eps;
      }
      if (o.frames) frames.push({ t: timesteps[i], images: await decode(rt, x0, o.digits.length) });
      x = next;
    }
    const nfe = (evaluations - evaluations0) / o.digits.length;
    const images = await decode(rt, x, o.digits.length);
    return { images: images, frames: frames, nfe: nfe, ms: performance.now() - start };
  }

  // ---- seeded Gaussian noise (mulberry32 + Box–Muller): the page's own draw, not torch's ---------------------------
  function gaussian(n, seed) {
    let s = seed >>> 0;
    const uniform = () => {
      s = (s + 0x6d2b79f5) >>> 0;
      let r = Math.imul(s ^ (s >>> 15), 1 | s);
      r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
      return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
    };
    const out = new Float64Array(n);
    for (let i = 0; i < n; i += 2) {
      const u = 1 - uniform(), v = uniform();
      const r = Math.sqrt(-2 * Math.log(u));
      out[i] = r * Math.cos(2 * Math.PI * v);
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
    }
    return out;
  }

  // ---- the widget ---------------------------------------------------------------------------------------------------
  const CSS = `
.mnistdiff-generator { border: 1px solid #d0d7de; border-radius: 6px; padding: .8em 1em; margin: 1em 0; }
.mnistdiff-generator .mg-controls { display: flex; flex-wrap: wrap; gap: .6em 1.2em; align-items: center; }
.mnistdiff-generator label { font-size: .9em; }
.mnistdiff-generator canvas { image-rendering: pixelated; background: #000; margin: 2px; }
.mnistdiff-generator .mg-digits canvas { width: 64px; height: 64px; }
.mnistdiff-generator .mg-frames canvas { width: 40px; height: 40px; }
.mnistdiff-generator .mg-status { font-size: .85em; color: #57606a; margin-top: .4em; }
.mnistdiff-generator .mg-frames { margin-top: .3em; font-size: .8em; color: #57606a; }`;

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => (k === "text" ? (e.textContent = v) : e.setAttribute(k, v)));
    (children || []).forEach((c) => e.appendChild(c));
    return e;
  }

  function draw(images, index) {
    const canvas = el("canvas", { width: 32, height: 32 });
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(32, 32);
    for (let p = 0; p < 1024; p++) {
      const v = Math.round(Math.min(255, Math.max(0, (images[index * 1024 + p] + 1) * 127.5)));
      img.data.set([v, v, v, 255], 4 * p);
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  function controls(root) {
    const digit = el("select", { "aria-label": "digit" }, [el("option", { value: "any", text: "any" })]);
    for (let k = 0; k < 10; k++) digit.appendChild(el("option", { value: String(k), text: String(k) }));
    digit.value = "7";
    const model = el("select", { "aria-label": "model" }, [
      el("option", { value: "student", text: "distilled student (4 steps, w folded in)" }),
      el("option", { value: "teacher", text: "teacher (guided DDIM)" }),
      el("option", { value: "pixel", text: "pixel DDPM (any digit, DPM-Solver++(2M) SDE)" }),
    ]);
    const steps = el("select", { "aria-label": "steps" });
    const guidance = el("input", { type: "range", min: "0", max: "6", step: "0.5", value: "2", "aria-label": "w" });
    const wText = el("span", { text: "2.0" });
    const seed = el("input", { type: "number", value: "0", min: "0", style: "width:5em", "aria-label": "seed" });
    const button = el("button", { type: "button", class: "btn btn-sm btn-primary", text: "Generate" });
    const row = el("div", { class: "mg-controls" }, [
      el("label", {}, [document.createTextNode("digit "), digit]),
      el("label", {}, [document.createTextNode("model "), model]),
      el("label", {}, [document.createTextNode("steps "), steps]),
      el("label", {}, [document.createTextNode("guidance w "), guidance, wText]),
      el("label", {}, [document.createTextNode("seed "), seed]),
      button,
    ]);
    root.appendChild(row);
    // a page may preset the box: <div class="mnistdiff-generator" data-model="teacher" data-steps="16"
    // data-guidance="4" data-digit="3">
    const preset = root.dataset;
    if (preset.digit) digit.value = preset.digit;
    if (preset.model) model.value = preset.model;
    if (preset.guidance) guidance.value = preset.guidance;
    if (preset.steps) steps.dataset.preset = preset.steps;
    return { digit, model, steps, guidance, wText, seed, button, pixelOption: model.lastChild };
  }

  /** Steps, w and the digit follow the model: the student's own steps and folded w; the teacher's step counts, any
   * w; the pixel model's step counts, no w and no digit to ask for (it is unconditional). */
  function syncControls(c, constants) {
    const m = c.model.value, student = m === "student", pixel = m === "pixel";
    c.pixelOption.hidden = !!constants && !constants.pixel;
    if (!constants) {
      c.steps.disabled = c.guidance.disabled = true;
      return;
    }
    const options = student ? [String(constants.student.timesteps.length)] : Object.keys(constants[m].steps);
    const fallback = pixel ? String(constants.pixel.default_steps) : options[Math.min(2, options.length - 1)];
    const keep = c.steps.dataset.model === m ? c.steps.value : c.steps.dataset.preset;
    c.steps.replaceChildren(...options.map((n) => el("option", { value: n, text: n })));
    c.steps.value = options.includes(keep) ? keep : fallback;
    c.steps.dataset.model = m;
    c.guidance.disabled = student || pixel;
    c.steps.disabled = student;
    c.digit.disabled = pixel;
    if (student) c.guidance.value = String(constants.student.guidance);
    c.wText.textContent = pixel ? "–" : Number(c.guidance.value).toFixed(1);
  }

  async function generate(c, out, status) {
    c.button.disabled = true;
    status.textContent = "loading the models…";
    try {
      await load();
      const seed = Number(c.seed.value) || 0;
      const digits = [], pixel = c.model.value === "pixel";
      for (let i = 0; i < COUNT; i++) digits.push(c.digit.value === "any" ? (seed * 7 + i * 3) % 10 : Number(c.digit.value));
      const opts = { model: c.model.value, digits: digits, steps: Number(c.steps.value),
                     guidance: Number(c.guidance.value), seed: seed, frames: true };
      status.textContent = pixel ? "loading the pixel model and sampling…" : "sampling…";
      const r = await sample(opts);
      out.digits.replaceChildren(...digits.map((_, i) => draw(r.images, i)));
      const shown = r.frames.filter((_, i) => i % Math.ceil(r.frames.length / MAX_FRAMES) === 0 ||
                                             i === r.frames.length - 1);
      out.frames.replaceChildren(document.createTextNode("x̂₀ of the first digit at t = " +
        shown.map((f) => f.t).join(", ") + ": "), ...shown.map((f) => draw(f.images, 0)));
      const how = opts.model === "student" ? `the student, ${opts.steps} steps, w = ${opts.guidance} folded in`
        : pixel ? `the pixel DDPM, DPM-Solver++(2M) SDE on Karras σ, ${opts.steps} steps`
          : `the teacher, guided DDIM (η = 0), ${opts.steps} steps, w = ${opts.guidance}`;
      const which = pixel ? "unconditional digits" : `digits (${digits.join(" ")})`;
      status.textContent = `${COUNT} ${which} by ${how}: ${r.nfe} network calls each ` +
        `(batched), ${r.ms.toFixed(0)} ms with the x̂₀ frames, in your browser (onnxruntime-web, WebAssembly, 1 thread).`;
    } catch (err) {
      status.textContent = location.protocol === "file:"
        ? "Opened from a file, your browser will not load the WebAssembly runtime. Serve the book instead: " +
          SERVE + ", then open http://localhost:8000/ (" + err.message + ")"
        : "The generator failed: " + err.message;
    } finally {
      c.button.disabled = false;
    }
  }

  function mount(root) {
    const c = controls(root);
    const out = { digits: el("div", { class: "mg-digits" }), frames: el("div", { class: "mg-frames" }) };
    const status = el("div", { class: "mg-status", role: "status" });
    root.append(out.digits, out.frames, status);
    status.textContent = location.protocol === "file:"
      ? "Opened from a file: if Generate fails, serve the book with " + SERVE + " and open http://localhost:8000/."
      : "Press Generate: the runtime and the student load once (the teacher and the pixel model when you first ask for them).";
    let constants = null; // sampler.json; a page opened from a file cannot fetch it
    const sync = () => syncControls(c, constants);
    if (location.protocol === "file:") sync();
    else fetchJSON(MODELS + "sampler.json").then((cs) => { constants = cs; sync(); }, sync);
    c.model.addEventListener("change", sync);
    c.guidance.addEventListener("input", () => (c.wText.textContent = Number(c.guidance.value).toFixed(1)));
    c.button.addEventListener("click", () => generate(c, out, status));
  }

  function init() {
    const roots = document.querySelectorAll(".mnistdiff-generator");
    if (!roots.length) return;
    document.head.appendChild(el("style", { text: CSS }));
    roots.forEach(mount);
  }

  window.mnistdiffGenerator = { load: load, sample: sample, gaussian: gaussian };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
