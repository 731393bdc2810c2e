//! The merge driver: check the adapter against the base, then produce every planned tensor
//! (base + delta, re-encoded) into a temporary folder that is renamed into place at the end.

use crate::adapter::{Adapter, Target};
use crate::base::{interleave_rows, Base, Sel};
use crate::plan::{output_config, plan, Enc, Format, Item, Recipe};
use crate::st::{from_f32, round_trip, to_f32, Dtype};
use crate::survival::Survival;
use crate::verify::{check_probe_len, check_tolerance, verify, within_tolerance, Verify};
use crate::writer::{clean_stale_temporaries, temp_name, write_json, Naming, ShardedWriter};
use anyhow::{bail, Context, Result};
use osstune_model::config::Config;
use osstune_model::quant::mxfp4::{dequantize_rows, quantize_rows, GROUP, GROUP_BYTES};
use rayon::prelude::*;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct MergeOptions {
    pub model: PathBuf,
    pub adapter: PathBuf,
    pub out: PathBuf,
    pub format: Format,
    /// Float dtype of everything that is not MXFP4 (BF16 default; F32 for exact checks).
    pub dtype: Dtype,
    pub max_shard_bytes: usize,
    /// Overrides the base's `Config::fingerprint()` (computed from config.json when None);
    /// compared with the adapter's `base_model.fingerprint`.
    pub base_fingerprint: Option<String>,
    pub progress: bool,
    /// Check the merged checkpoint against base + adapter before publishing it.
    pub verify: Option<VerifyOptions>,
}

pub struct VerifyOptions {
    /// Tokens per probe sequence (2 sequences).
    pub probe_len: usize,
    /// Max allowed |Δlogit|; None = 1e-3 for f32 dense outputs, else 2% of max |logit|.
    pub tol: Option<f32>,
}

pub struct MergeReport {
    pub survival: Survival,
    pub shards: Vec<String>,
    pub bytes: usize,
    pub seconds: f64,
    pub adapted: usize,
    pub verify: Option<(Verify, f32)>,
}

/// Removes the temporary output folder unless the merge completed.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn merge(opts: &MergeOptions) -> Result<MergeReport> {
    let t0 = Instant::now();
    if opts.out.exists() {
        bail!(
            "{}: already exists; remove it or choose another --out",
            opts.out.display()
        );
    }
    if opts.max_shard_bytes == 0 {
        bail!("the largest shard size must be > 0");
    }
    let model_cfg = Config::from_model_dir(&opts.model)
        .with_context(|| format!("reading {}/config.json", opts.model.display()))?;
    if let Some(v) = &opts.verify {
        v.tol.map(check_tolerance).transpose()?;
        check_probe_len(&model_cfg, v.probe_len)?;
    }
    let base = Base::open(&opts.model)?;
    let adapter = Adapter::open(&opts.adapter)?;
    let fingerprint = match &opts.base_fingerprint {
        Some(f) => f.clone(),
        None => model_cfg.fingerprint(),
    };
    check_base(&base, &adapter, Some(&fingerprint))?;
    adapter.check_shapes(base.layers, |l, t| base.target_shape(l, t))?;

    let items = plan(&base, opts.format, opts.dtype)?;
    let parent = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let leaf = opts
        .out
        .file_name()
        .context("--out has no folder name")?
        .to_string_lossy();
    for stale in clean_stale_temporaries(&parent, &leaf)? {
        eprintln!("removed {}, left by an interrupted merge", stale.display());
    }
    let tmp = TempDir {
        path: parent.join(temp_name(&leaf, std::process::id())),
        keep: false,
    };
    std::fs::create_dir_all(&tmp.path)
        .with_context(|| format!("creating {}", tmp.path.display()))?;
    let (naming, meta) = if opts.format.is_mlx() {
        (Naming::Mlx, "mlx")
    } else {
        (Naming::Hf, "pt")
    };
    let specs = items.iter().map(|i| i.spec.clone()).collect();
    let mut w = ShardedWriter::new(&tmp.path, specs, opts.max_shard_bytes, naming, meta)?;
    let mut ctx = Ctx {
        base: &base,
        adapter: &adapter,
        dtype: opts.dtype,
        survival: Survival::default(),
        scales: None,
        progress: Progress::new(w.total_bytes(), opts.progress),
        buf: Vec::new(),
    };
    for item in &items {
        ctx.produce(item, &mut w)
            .with_context(|| format!("producing {}", item.spec.name))?;
    }
    ctx.progress.finish();
    let bytes = w.total_bytes();
    let shards = w.finish()?;
    write_json(
        &tmp.path.join("config.json"),
        &output_config(&base, opts.format, opts.dtype),
    )?;
    copy_side_files(&opts.model, &tmp.path)?;
    let provenance = serde_json::json!({
        "merged_by": "osstune", "format": opts.format.name(), "dtype": opts.dtype.name(),
        "base": opts.model.display().to_string(), "adapter": opts.adapter.display().to_string(),
        "rank": adapter.config.rank, "alpha": adapter.config.alpha,
        "base_fingerprint": adapter.config.base_model.fingerprint,
        "delta_rel_err": ctx.survival.groups.iter()
            .map(|(g, a)| (g.clone(), serde_json::json!(a.rel_err())))
            .collect::<serde_json::Map<_, _>>(),
    });
    write_json(&tmp.path.join("osstune_merge.json"), &provenance)?;
    // Verify the temporary folder, so a failed check publishes nothing.
    let verified = match &opts.verify {
        None => None,
        Some(v) => {
            let r = verify(&opts.model, &opts.adapter, &tmp.path, v.probe_len)?;
            let exact = opts.dtype == Dtype::F32 && !opts.format.is_mxfp4();
            let tol = v
                .tol
                .unwrap_or(if exact { 1e-3 } else { 0.02 * r.max_logit });
            // Fails closed: NaN logits (or a NaN tolerance from NaN logits) fail too.
            if !within_tolerance(r.max_diff, tol) {
                bail!(
                    "--verify: merged logits differ from base + adapter by up to {:.3e}, \
                     {:.3e} on average (tolerance {tol:.3e}; the adapter itself moves logits by \
                     {:.3e}); nothing was written. Rounding the merged weights to {} can flip \
                     top-k expert choices on some tokens: check the fold itself with \
                     --dtype f32 --format hf, or accept it with a larger --verify-tol",
                    r.max_diff,
                    r.mean_diff,
                    r.adapter_effect,
                    if opts.format.is_mxfp4() {
                        "MXFP4"
                    } else {
                        opts.dtype.name()
                    }
                );
            }
            Some((r, tol))
        }
    };
    std::fs::rename(&tmp.path, &opts.out)
        .with_context(|| format!("renaming {} to {}", tmp.path.display(), opts.out.display()))?;
    let mut tmp = tmp;
    tmp.keep = true;
    Ok(MergeReport {
        survival: ctx.survival,
        shards,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
        adapted: adapter.targets().count(),
        verify: verified,
    })
}

/// The adapter's recorded base must be this base: fingerprint when both are known, plus the
/// dimensions recorded in adapter_config.json.
fn check_base(base: &Base, adapter: &Adapter, fingerprint: Option<&str>) -> Result<()> {
    let b = &adapter.config.base_model;
    let cfg = adapter.dir.join("adapter_config.json");
    let get = |k: &str| {
        base.config
            .get(k)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    };
    for (key, want) in [
        ("num_hidden_layers", b.num_hidden_layers),
        ("hidden_size", b.hidden_size),
        ("num_local_experts", b.num_local_experts),
    ] {
        if let Some(got) = get(key) {
            if want != got {
                bail!(
                    "{}: adapter was made for a base with {key} = {want}, {} has {got}",
                    cfg.display(),
                    base.dir.display()
                );
            }
        }
    }
    if let (want, Some(got)) = (
        b.model_type.as_str(),
        base.config.get("model_type").and_then(|v| v.as_str()),
    ) {
        if want != got {
            bail!(
                "{}: adapter is for model_type {want}, base is {got}",
                cfg.display()
            );
        }
    }
    if let (Some(want), Some(got)) = (b.fingerprint.as_deref(), fingerprint) {
        if want != got {
            bail!(
                "{}: adapter was trained on base fingerprint {want}, but {} has fingerprint {got}: \
                 it belongs to another model",
                cfg.display(),
                base.dir.display()
            );
        }
    }
    Ok(())
}

/// Tokenizer, generation config, chat template …: every top-level file that is not weights
/// or config.
fn copy_side_files(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let skip = !p.is_file()
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
            || name == "config.json"
            || name == "osstune_merge.json";
        if !skip {
            std::fs::copy(&p, to.join(name)).with_context(|| format!("copying {}", p.display()))?;
        }
    }
    Ok(())
}

struct Ctx<'a> {
    base: &'a Base,
    adapter: &'a Adapter,
    dtype: Dtype,
    survival: Survival,
    /// MXFP4 scales of the packed tensor just written, for its `scales` tensor.
    scales: Option<((usize, Sel), Vec<u8>)>,
    progress: Progress,
    buf: Vec<u8>,
}

impl Ctx<'_> {
    fn produce(&mut self, item: &Item, w: &mut ShardedWriter) -> Result<()> {
        let name = item.spec.name.as_str();
        match &item.recipe {
            Recipe::Copy(src) => self.copy(src, name, w),
            Recipe::Linear { src, layer, target } => {
                let base = self.base.tensors.f32(src)?;
                match self.adapter.linear_delta(*layer, *target)? {
                    None => self.write_floats(name, &base, w),
                    Some(d) => {
                        let merged: Vec<f32> = base.iter().zip(&d).map(|(a, b)| a + b).collect();
                        let dt = self.dtype;
                        let stored: Vec<f32> = merged.iter().map(|&x| round_trip(x, dt)).collect();
                        self.survival.add(group(*target), &base, &d, &stored);
                        self.write_floats(name, &merged, w)
                    }
                }
            }
            Recipe::Bias { layer, sel } => {
                let (gu, down) = self.base.expert_biases(*layer)?;
                let v: Vec<f32> = match sel {
                    Sel::GateUp => gu,
                    Sel::Down => down,
                    Sel::Gate => gu.iter().step_by(2).copied().collect(),
                    Sel::Up => gu.iter().skip(1).step_by(2).copied().collect(),
                };
                self.write_floats(name, &v, w)
            }
            Recipe::Experts {
                layer,
                sel,
                enc: Enc::Scales,
            } => match self.scales.take() {
                Some((key, s)) if key == (*layer, *sel) => {
                    self.progress.add(s.len());
                    w.write(name, &s)
                }
                _ => bail!("internal: scales of {name} were not computed"),
            },
            Recipe::Experts { layer, sel, enc } => self.experts(name, *layer, *sel, *enc, w),
        }
    }

    fn write_floats(&mut self, name: &str, v: &[f32], w: &mut ShardedWriter) -> Result<()> {
        from_f32(v, self.dtype, &mut self.buf)?;
        self.progress.add(self.buf.len());
        w.write(name, &self.buf)
    }

    /// Chunked copy: an embedding table never needs a second full copy in memory.
    fn copy(&mut self, src: &str, name: &str, w: &mut ShardedWriter) -> Result<()> {
        let info = self.base.tensors.info(src)?;
        let bytes = self.base.tensors.bytes(src)?;
        let chunk = (1 << 22) * info.dtype.size();
        for c in bytes.chunks(chunk) {
            if info.dtype == self.dtype {
                self.progress.add(c.len());
                w.write(name, c)?;
            } else {
                let v = to_f32(c, info.dtype)?;
                self.write_floats(name, &v, w)?;
            }
        }
        Ok(())
    }

    /// Base rows of one expert plus the adapter's delta (None if the selection is not adapted).
    fn expert_delta(&self, layer: usize, e: usize, sel: Sel) -> Result<Option<Vec<f32>>> {
        let a = self.adapter;
        let one = |t: Target| a.expert_delta(layer, t, e);
        Ok(match sel {
            Sel::Gate => one(Target::Gate)?,
            Sel::Up => one(Target::Up)?,
            Sel::Down => one(Target::Down)?,
            Sel::GateUp => {
                let (g, u) = (one(Target::Gate)?, one(Target::Up)?);
                if g.is_none() && u.is_none() {
                    return Ok(None);
                }
                let (rows, inp) = self.base.sel_dims(Sel::Gate);
                let zero = vec![0f32; rows * inp];
                let mut out = vec![0f32; 2 * rows * inp];
                interleave_rows(
                    g.as_deref().unwrap_or(&zero),
                    u.as_deref().unwrap_or(&zero),
                    inp,
                    &mut out,
                );
                Some(out)
            }
        })
    }

    /// One expert tensor, experts folded in parallel in batches of the thread count and
    /// written in order: memory stays at (threads × one expert), whatever E and depth.
    fn experts(
        &mut self,
        name: &str,
        layer: usize,
        sel: Sel,
        enc: Enc,
        w: &mut ShardedWriter,
    ) -> Result<()> {
        if enc == Enc::Scales {
            bail!("internal: scales are written from the packed pass");
        }
        let mut all_scales = Vec::new();
        let batch = rayon::current_num_threads().max(1);
        let ids: Vec<usize> = (0..self.base.experts).collect();
        for chunk in ids.chunks(batch) {
            let this = &*self;
            let outs: Vec<ExpertOut> = chunk
                .par_iter()
                .map(|&e| {
                    this.one_expert(layer, e, sel, enc)
                        .with_context(|| format!("expert {e}"))
                })
                .collect::<Result<_>>()?;
            for o in outs {
                self.progress.add(o.bytes.len());
                w.write(name, &o.bytes)?;
                all_scales.extend_from_slice(&o.scales);
                self.survival.merge(o.survival);
            }
        }
        if enc == Enc::Packed {
            self.scales = Some(((layer, sel), all_scales));
        }
        Ok(())
    }

    /// Base + delta for expert `e`, encoded; the survival of its delta.
    fn one_expert(&self, layer: usize, e: usize, sel: Sel, enc: Enc) -> Result<ExpertOut> {
        let (rows, inp) = self.base.sel_dims(sel);
        let base = self.base.expert_rows(layer, e, sel)?;
        let delta = self.expert_delta(layer, e, sel)?;
        let merged: Vec<f32> = match &delta {
            Some(d) => base.iter().zip(d).map(|(a, b)| a + b).collect(),
            None => base.clone(),
        };
        let mut out = ExpertOut {
            bytes: Vec::new(),
            scales: Vec::new(),
            survival: Survival::default(),
        };
        let stored = match enc {
            Enc::Dense { transposed } => {
                let v = if transposed {
                    transpose(&merged, rows, inp)
                } else {
                    merged.clone()
                };
                from_f32(&v, self.dtype, &mut out.bytes)?;
                let dt = self.dtype;
                delta.as_ref().map(|_| {
                    merged
                        .iter()
                        .map(|&x| round_trip(x, dt))
                        .collect::<Vec<_>>()
                })
            }
            Enc::Packed => {
                let groups = inp / GROUP;
                out.bytes = vec![0u8; rows * groups * GROUP_BYTES];
                out.scales = vec![0u8; rows * groups];
                quantize_rows(&merged, &mut out.bytes, &mut out.scales)?;
                match delta {
                    Some(_) => {
                        let mut back = vec![0f32; merged.len()];
                        dequantize_rows(&out.bytes, &out.scales, &mut back)?;
                        Some(back)
                    }
                    None => None,
                }
            }
            Enc::Scales => bail!("internal: scales are written from the packed pass"),
        };
        if let (Some(d), Some(s)) = (&delta, &stored) {
            for r in 0..rows {
                let g = match sel {
                    Sel::GateUp if r % 2 == 0 => "gate_proj",
                    Sel::GateUp | Sel::Up => "up_proj",
                    Sel::Gate => "gate_proj",
                    Sel::Down => "down_proj",
                };
                let span = r * inp..(r + 1) * inp;
                out.survival
                    .add(g, &base[span.clone()], &d[span.clone()], &s[span]);
            }
        }
        Ok(out)
    }
}

struct ExpertOut {
    bytes: Vec<u8>,
    scales: Vec<u8>,
    survival: Survival,
}

fn group(t: Target) -> &'static str {
    t.module().rsplit('.').next().unwrap_or("?")
}

/// [rows, cols] → [cols, rows].
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Byte progress on stderr: a redrawn bar on a terminal, a line per 10% otherwise.
struct Progress {
    total: usize,
    done: usize,
    shown: usize,
    tty: bool,
    on: bool,
    t0: Instant,
}

impl Progress {
    fn new(total: usize, on: bool) -> Progress {
        Progress {
            total: total.max(1),
            done: 0,
            shown: 0,
            tty: std::io::stderr().is_terminal(),
            on,
            t0: Instant::now(),
        }
    }

    fn add(&mut self, n: usize) {
        self.done += n;
        if !self.on {
            return;
        }
        let pct = self.done * 100 / self.total;
        let step = if self.tty { 1 } else { 10 };
        if pct >= self.shown + step || self.done == self.total {
            self.shown = pct;
            let bar: String = (0..30)
                .map(|i| if i * 100 < pct * 30 { '#' } else { '.' })
                .collect();
            let mb = self.done as f64 / 1e6;
            let rate = mb / self.t0.elapsed().as_secs_f64().max(1e-9);
            let mut err = std::io::stderr();
            let end = if self.tty { "\r" } else { "\n" };
            let _ = write!(
                err,
                "merge [{bar}] {pct:>3}%  {mb:.1} MB  {rate:.0} MB/s{end}"
            );
        }
    }

    fn finish(&self) {
        if self.on && self.tty {
            eprintln!();
        }
    }
}
