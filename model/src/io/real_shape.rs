//! Random checkpoints at the real gpt-oss-20b / gpt-oss-120b shapes, in the Hugging Face
//! release layout (docs/gpt-oss.md §2.1): MXFP4 experts (`*_blocks` U8 `[E, rows, in/32, 16]`,
//! `*_scales` U8 `[E, rows, in/32]`), everything else bf16, sharded
//! `model-0000K-of-0000N.safetensors` (1-based, as the hub names them) with
//! `model.safetensors.index.json`.
//!
//! Written as a stream: the tensor list and every shard's header are known from the shapes
//! alone, so each tensor is generated and written in chunks straight to its shard; memory stays
//! at one chunk whatever the model's size (the 120B is 61 GB). The values are seeded: bf16
//! weights N(0, 0.02) like transformers' `_init_weights`, norms 1, biases and sinks small,
//! MXFP4 codes uniform with scale 2^-7 (|w| ≈ 0.02, the magnitude of the released experts).
//! A shape with fewer layers gives a real-width slice that fits a small machine.

use crate::io::tiny::{config_for, ModelShape};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use osstune_rng::SplitMix64;
use std::io::Write;
use std::path::Path;

/// The shapes of a released gpt-oss model (docs/gpt-oss.md §1.1), by its hub name:
/// `gpt-oss-20b` (24 layers, 32 experts) or `gpt-oss-120b` (36 layers, 128 experts); every
/// other dimension is shared.
pub fn release_shape(name: &str) -> Option<ModelShape> {
    let (layers, experts) = match name {
        "gpt-oss-20b" => (24, 32),
        "gpt-oss-120b" => (36, 128),
        _ => return None,
    };
    Some(ModelShape {
        hidden: 2880,
        layers,
        heads: 64,
        kv_heads: 8,
        head_dim: 64,
        experts,
        top_k: 4,
        inter: 2880,
        vocab: 201088,
        window: 128,
        dtype: DType::BF16,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// bf16 N(0, std)
    Normal(f32),
    /// bf16 constant
    Const(f32),
    /// MXFP4 codes, uniform
    Blocks,
    /// MXFP4 scale bytes
    Scales,
}

struct Spec {
    name: String,
    shape: Vec<usize>,
    kind: Kind,
}

impl Spec {
    fn bytes(&self) -> u64 {
        let n: usize = self.shape.iter().product();
        let per = match self.kind {
            Kind::Blocks | Kind::Scales => 1,
            _ => 2,
        };
        (n * per) as u64
    }

    fn params(&self) -> u64 {
        let n = self.shape.iter().product::<usize>() as u64;
        match self.kind {
            Kind::Blocks => 2 * n,
            Kind::Scales => 0,
            _ => n,
        }
    }

    fn dtype(&self) -> &'static str {
        match self.kind {
            Kind::Blocks | Kind::Scales => "U8",
            _ => "BF16",
        }
    }
}

/// Every tensor of the checkpoint in the release's order (embeddings, layer by layer, then
/// the final norm and lm_head).
fn specs(s: &ModelShape) -> Vec<Spec> {
    let (h, i, e, v) = (s.hidden, s.inter, s.experts, s.vocab);
    let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let layers = s.layers;
    let mut out = Vec::new();
    let mut put =
        |name: String, shape: Vec<usize>, kind: Kind| out.push(Spec { name, shape, kind });
    put(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        Kind::Normal(0.02),
    );
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        put(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            Kind::Const(1.0),
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            Kind::Const(1.0),
        );
        for (m, out_dim, in_dim) in [
            ("q_proj", q, h),
            ("k_proj", kv, h),
            ("v_proj", kv, h),
            ("o_proj", h, q),
        ] {
            put(
                format!("{p}.self_attn.{m}.weight"),
                vec![out_dim, in_dim],
                Kind::Normal(0.02),
            );
            put(
                format!("{p}.self_attn.{m}.bias"),
                vec![out_dim],
                Kind::Normal(0.01),
            );
        }
        put(
            format!("{p}.self_attn.sinks"),
            vec![s.heads],
            Kind::Normal(0.5),
        );
        put(
            format!("{p}.mlp.router.weight"),
            vec![e, h],
            Kind::Normal(0.02),
        );
        put(format!("{p}.mlp.router.bias"), vec![e], Kind::Normal(0.01));
        let x = format!("{p}.mlp.experts");
        put(
            format!("{x}.gate_up_proj_blocks"),
            vec![e, 2 * i, h / 32, 16],
            Kind::Blocks,
        );
        put(
            format!("{x}.gate_up_proj_scales"),
            vec![e, 2 * i, h / 32],
            Kind::Scales,
        );
        put(
            format!("{x}.gate_up_proj_bias"),
            vec![e, 2 * i],
            Kind::Normal(0.01),
        );
        put(
            format!("{x}.down_proj_blocks"),
            vec![e, h, i / 32, 16],
            Kind::Blocks,
        );
        put(
            format!("{x}.down_proj_scales"),
            vec![e, h, i / 32],
            Kind::Scales,
        );
        put(
            format!("{x}.down_proj_bias"),
            vec![e, h],
            Kind::Normal(0.01),
        );
    }
    put("model.norm.weight".into(), vec![h], Kind::Const(1.0));
    put("lm_head.weight".into(), vec![v, h], Kind::Normal(0.02));
    out
}

/// (parameters, bytes) of a checkpoint of shape `s` in the release layout (an MXFP4 byte holds
/// two parameters).
pub fn checkpoint_size(s: &ModelShape) -> (u64, u64) {
    specs(s)
        .iter()
        .fold((0, 0), |(p, b), t| (p + t.params(), b + t.bytes()))
}

/// What [`write_release_layout`] wrote.
#[derive(Debug, Clone)]
pub struct RealSummary {
    pub layers: usize,
    pub shards: usize,
    pub bytes: u64,
    /// Parameters (an MXFP4 code counts as one).
    pub params: u64,
}

/// Writes `config.json`, the shards and the index of a checkpoint of shape `s` (bf16, MXFP4
/// experts) into `out`, at most `max_shard_bytes` of tensor data per shard (a tensor is never
/// split).
pub fn write_release_layout(
    out: &Path,
    s: &ModelShape,
    seed: u64,
    max_shard_bytes: u64,
) -> Result<RealSummary> {
    if s.layers == 0 || max_shard_bytes == 0 {
        bail!("a checkpoint needs at least one layer and a shard size > 0");
    }
    if !s.hidden.is_multiple_of(32) || !s.inter.is_multiple_of(32) {
        bail!("MXFP4 needs hidden and intermediate sizes divisible by 32");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let specs = specs(s);
    // Greedy shards in write order.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0u64;
    for (k, s) in specs.iter().enumerate() {
        if used > 0 && used + s.bytes() > max_shard_bytes {
            shards.push(Vec::new());
            used = 0;
        }
        shards.last_mut().expect("one shard").push(k);
        used += s.bytes();
    }
    let n = shards.len();
    let name = |k: usize| format!("model-{:05}-of-{n:05}.safetensors", k + 1);
    let mut weight_map = serde_json::Map::new();
    let mut rng = SplitMix64::new(seed);
    let (mut total, mut params) = (0u64, 0u64);
    for (k, members) in shards.iter().enumerate() {
        // Each shard under a temporary name, renamed when whole; the index and config.json
        // come last, so an interrupted run never looks like a checkpoint.
        let file = out.join(name(k));
        let tmp = out.join(format!(".{}.tmp-{}", name(k), std::process::id()));
        write_shard(&tmp, &specs, members, &mut rng)
            .with_context(|| format!("writing {}", file.display()))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
        for &m in members {
            weight_map.insert(specs[m].name.clone(), name(k).into());
            total += specs[m].bytes();
            params += specs[m].params();
        }
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    std::fs::write(
        out.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index)?,
    )?;
    let cfg = config_for(s, true);
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&cfg)?)?;
    Ok(RealSummary {
        layers: s.layers,
        shards: n,
        bytes: total,
        params,
    })
}

/// One shard: the header (offsets follow from the shapes), then each tensor generated in
/// chunks of at most 4 MiB.
fn write_shard(file: &Path, specs: &[Spec], members: &[usize], rng: &mut SplitMix64) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for &m in members {
        let s = &specs[m];
        header.insert(
            s.name.clone(),
            serde_json::json!({
                "dtype": s.dtype(),
                "shape": s.shape,
                "data_offsets": [off, off + s.bytes()],
            }),
        );
        off += s.bytes();
    }
    let mut h = serde_json::to_vec(&header)?;
    // The data section starts 8-aligned, as the safetensors writers pad it.
    while (h.len() + 8) % 8 != 0 {
        h.push(b' ');
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(file)?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    let mut buf = Vec::with_capacity(1 << 22);
    for &m in members {
        let s = &specs[m];
        let mut left = s.bytes() as usize;
        while left > 0 {
            let n = left.min(1 << 22);
            buf.clear();
            fill(&mut buf, n, s.kind, rng);
            w.write_all(&buf)?;
            left -= n;
        }
    }
    w.flush()?;
    Ok(())
}

/// `n` bytes of tensor data of `kind` (n even for bf16).
fn fill(buf: &mut Vec<u8>, n: usize, kind: Kind, rng: &mut SplitMix64) {
    match kind {
        Kind::Blocks => {
            while buf.len() < n {
                buf.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            buf.truncate(n);
        }
        // 2^(120 - 127) = 2^-7.
        Kind::Scales => buf.resize(n, 120),
        Kind::Const(v) => {
            let b = bf16_bits(v).to_le_bytes();
            for _ in 0..n / 2 {
                buf.extend_from_slice(&b);
            }
        }
        Kind::Normal(std) => {
            while buf.len() < n {
                // Box–Muller: two normals from two uniforms.
                let u1 = rng.next_f64().max(1e-300);
                let u2 = rng.next_f64();
                let r = (-2.0 * u1.ln()).sqrt() * std as f64;
                let t = 2.0 * std::f64::consts::PI * u2;
                for z in [r * t.cos(), r * t.sin()] {
                    buf.extend_from_slice(&bf16_bits(z as f32).to_le_bytes());
                }
            }
            buf.truncate(n);
        }
    }
}

/// f32 → bf16 bits, round to nearest even (finite inputs).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}
