//! `osstune adapters export|import`: osstune adapters ↔ PEFT and mlx-lm files
//! (docs/gpt-oss.md §3).
//!
//! PEFT (`adapter_model.safetensors` + `adapter_config.json`, loaded with
//! `PeftModel.from_pretrained` on transformers' GptOssForCausalLM):
//! - q/k/v/o: `lora.Linear`, `…self_attn.q_proj.lora_A.weight` [r, in] / `lora_B.weight`
//!   [out, r] — our orientation.
//! - router (`target_parameters=["mlp.router.weight"]`, ParamWrapper on the [E, H] weight):
//!   `…mlp.router.lora_A.weight` [r, H], `lora_B.weight` [E, r].
//! - experts (`target_parameters=["mlp.experts.gate_up_proj","mlp.experts.down_proj"]`,
//!   ParamWrapper on the 3-D tensors, the second wraps the first, so gate_up lives under
//!   `…mlp.experts.base_layer.lora_*` when down_proj is adapted too): lora_A [E·r, in] with the
//!   expert the SLOWEST index of its rows; lora_B [out, E·r] with the expert the FASTEST index
//!   of its columns (column j·E + e is rank j of expert e).
//! - PEFT has one LoRA on the fused, interleaved gate_up [2I] output; osstune has separate
//!   gate and up LoRAs. Both fit exactly in one fused LoRA of rank 2r: A = [A_gate; A_up],
//!   B rows 2i = [B_gate_i, 0], rows 2i+1 = [0, B_up_i]. PEFT uses one rank for the whole
//!   adapter, so every other factor is zero-padded to 2r and `lora_alpha` doubled: the scale
//!   alpha/r and every delta are unchanged.
//!
//! mlx-lm (`adapters.safetensors` + `adapter_config.json` with `lora_parameters.scale`
//! absolute = alpha / r): LoRALinear `lora_a` [in, r], `lora_b` [r, out] (transposed from
//! ours); LoRASwitchLinear `lora_a` [E, r, in], `lora_b` [E, out, r] (ours). mlx-lm adapts the
//! last `num_layers` layers, so exported layers must be the last N.
//!
//! Import reverses both; a fused PEFT gate_up LoRA of rank r splits exactly into gate and up
//! LoRAs of rank r sharing A (B's even / odd rows).

use crate::adapters::{
    read_config, read_safetensors, safetensors_bytes, AdapterConfig, BaseModelInfo, CONFIG_FILE,
    WEIGHTS_FILE,
};
use crate::checkpoint::write_atomic;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use osstune_model::lora::targets::Peft;
use osstune_model::Target;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Peft,
    Mlx,
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "peft" => Ok(Self::Peft),
            "mlx" => Ok(Self::Mlx),
            _ => bail!("unknown adapter format {s:?} (peft or mlx)"),
        }
    }
}

/// Our factors of one layer/target.
struct Pair {
    a: Tensor,
    b: Tensor,
}

/// The factors keyed by (layer, target); model-level targets sit at layer 0.
type Pairs = BTreeMap<(usize, Target), Pair>;

fn our_pairs(
    tensors: &mut HashMap<String, Tensor>,
    cfg: &AdapterConfig,
    src: &Path,
) -> Result<Pairs> {
    let mut out = BTreeMap::new();
    for name in &cfg.targets {
        let t = Target::parse(name).with_context(|| format!("{}: targets", src.display()))?;
        let layers = if t.per_layer() {
            cfg.layers.clone()
        } else {
            vec![0]
        };
        for l in layers {
            let base = t.path(l);
            let mut get = |s: &str| {
                let n = format!("{base}.{s}");
                tensors
                    .remove(&n)
                    .with_context(|| format!("{}: missing tensor {n}", src.display()))
            };
            let a = get("lora_a")?;
            let b = get("lora_b")?;
            out.insert((l, t), Pair { a, b });
        }
    }
    Ok(out)
}

fn zero_pad_rank(p: &Pair, r2: usize) -> Result<(Tensor, Tensor)> {
    // A [.., r, in] gets zero rows, B [.., out, r] zero columns.
    let ra = p.a.dims().len() - 2;
    let rb = p.b.dims().len() - 1;
    let r = p.a.dims()[ra];
    if r == r2 {
        return Ok((p.a.clone(), p.b.clone()));
    }
    let mut za = p.a.dims().to_vec();
    za[ra] = r2 - r;
    let mut zb = p.b.dims().to_vec();
    zb[rb] = r2 - r;
    Ok((
        Tensor::cat(
            &[p.a.clone(), Tensor::zeros(za, p.a.dtype(), p.a.device())?],
            ra,
        )?,
        Tensor::cat(
            &[p.b.clone(), Tensor::zeros(zb, p.b.dtype(), p.b.device())?],
            rb,
        )?,
    ))
}

/// [E, r, in] → [E·r, in] (expert slowest).
fn peft_expert_a(a: &Tensor) -> Result<Tensor> {
    let (e, r, i) = a.dims3()?;
    Ok(a.reshape((e * r, i))?)
}

/// [E, out, r] → [out, r·E] with column j·E + e = B_e[:, j] (expert fastest).
fn peft_expert_b(b: &Tensor) -> Result<Tensor> {
    let (e, o, r) = b.dims3()?;
    Ok(b.permute((1, 2, 0))?.contiguous()?.reshape((o, r * e))?)
}

fn from_peft_expert_a(a: &Tensor, e: usize) -> Result<Tensor> {
    let (er, i) = a.dims2()?;
    Ok(a.reshape((e, er / e, i))?)
}

fn from_peft_expert_b(b: &Tensor, e: usize) -> Result<Tensor> {
    let (o, re) = b.dims2()?;
    Ok(b.reshape((o, re / e, e))?
        .permute((2, 0, 1))?
        .contiguous()?)
}

/// Interleaves gate [E, I, r2] and up [E, I, r2] rows into [E, 2I, r2] (gate even, up odd).
fn interleave_rows(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (e, i, r) = gate.dims3()?;
    Ok(Tensor::stack(&[gate, up], 2)?.reshape((e, 2 * i, r))?)
}

pub fn export(src: &Path, dst: &Path, format: Format) -> Result<()> {
    let cfg = read_config(src)?;
    let wpath = src.join(WEIGHTS_FILE);
    let mut tensors = read_safetensors(&wpath, &Device::Cpu)?;
    let pairs = our_pairs(&mut tensors, &cfg, &wpath)?;
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    match format {
        Format::Peft => export_peft(&cfg, &pairs, dst),
        Format::Mlx => export_mlx(&cfg, &pairs, dst),
    }
}

fn export_peft(cfg: &AdapterConfig, pairs: &Pairs, dst: &Path) -> Result<()> {
    let has = |t: &str| cfg.targets.iter().any(|x| x == t);
    let dense = |t: &Target| !t.is_expert();
    let dense_pair = |t: Target, l: usize, out: &mut Vec<(String, Tensor)>| -> Result<()> {
        if let Some(p) = pairs.get(&(l, t)) {
            let (a, b) = zero_pad_rank(p, r2_of(cfg))?;
            let pre = format!("base_model.model.{}", t.path(l));
            out.push((format!("{pre}.lora_A.weight"), a));
            out.push((format!("{pre}.lora_B.weight"), b));
        }
        Ok(())
    };
    let r2 = r2_of(cfg);
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for &l in &cfg.layers {
        let pre = format!("base_model.model.model.layers.{l}");
        for t in Target::ALL
            .into_iter()
            .filter(|t| t.per_layer() && dense(t))
        {
            dense_pair(t, l, &mut out)?;
        }
        let down = pairs.get(&(l, Target::Down));
        let gate = pairs.get(&(l, Target::Gate));
        let up = pairs.get(&(l, Target::Up));
        // gate_up is wrapped first, down_proj around it (see module docs).
        let gu_prefix = if down.is_some() {
            format!("{pre}.mlp.experts.base_layer")
        } else {
            format!("{pre}.mlp.experts")
        };
        if gate.is_some() || up.is_some() {
            let some = gate.or(up).context("gate or up present")?;
            let (e, i, r) = some.b.dims3()?;
            let zeros_b = Tensor::zeros((e, i, r), some.b.dtype(), some.b.device())?;
            let (a, b) = match (gate, up) {
                (Some(g), Some(u)) => {
                    let a = Tensor::cat(&[&g.a, &u.a], 1)?; // [E, 2r, H]
                    let gb = Tensor::cat(&[&g.b, &zeros_b], 2)?; // [E, I, 2r]
                    let ub = Tensor::cat(&[&zeros_b, &u.b], 2)?;
                    (a, interleave_rows(&gb, &ub)?)
                }
                (Some(g), None) => (g.a.clone(), interleave_rows(&g.b, &zeros_b)?),
                (None, Some(u)) => (u.a.clone(), interleave_rows(&zeros_b, &u.b)?),
                (None, None) => unreachable_pair()?,
            };
            out.push((format!("{gu_prefix}.lora_A.weight"), peft_expert_a(&a)?));
            out.push((format!("{gu_prefix}.lora_B.weight"), peft_expert_b(&b)?));
        }
        if let Some(d) = down {
            let (a, b) = zero_pad_rank(d, r2)?;
            out.push((
                format!("{pre}.mlp.experts.lora_A.weight"),
                peft_expert_a(&a)?,
            ));
            out.push((
                format!("{pre}.mlp.experts.lora_B.weight"),
                peft_expert_b(&b)?,
            ));
        }
    }
    for t in Target::ALL
        .into_iter()
        .filter(|t| !t.per_layer() && dense(t))
    {
        dense_pair(t, 0, &mut out)?;
    }
    let (mut target_modules, mut target_parameters): (Vec<&str>, Vec<&str>) = (vec![], vec![]);
    for t in Target::ALL.into_iter().filter(|t| has(t.name())) {
        let list = match t.peft() {
            Peft::Module(m) => (&mut target_modules, m),
            Peft::Parameter(p) | Peft::Experts(p) => (&mut target_parameters, p),
        };
        if !list.0.contains(&list.1) {
            list.0.push(list.1);
        }
    }
    let all_layers = cfg.layers.len() == cfg.base_model.num_hidden_layers;
    let pcfg = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": null,
        "r": r2,
        "lora_alpha": cfg.alpha * (r2 as f64 / cfg.rank as f64),
        "lora_dropout": cfg.dropout,
        "target_modules": target_modules,
        "target_parameters": target_parameters,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "layers_to_transform": if all_layers { serde_json::Value::Null } else { json!(cfg.layers) },
        "layers_pattern": if all_layers { serde_json::Value::Null } else { json!("layers") },
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": null,
        "inference_mode": true,
    });
    write_atomic(
        &dst.join("adapter_model.safetensors"),
        &safetensors_bytes(&out)?,
    )?;
    write_atomic(
        &dst.join("adapter_config.json"),
        &serde_json::to_vec_pretty(&pcfg)?,
    )
}

/// PEFT's one rank for the whole adapter: 2r when gate and up share the fused gate_up LoRA.
fn r2_of(cfg: &AdapterConfig) -> usize {
    let has = |t: Target| cfg.targets.iter().any(|x| x == t.name());
    if has(Target::Gate) && has(Target::Up) {
        2 * cfg.rank
    } else {
        cfg.rank
    }
}

fn unreachable_pair<T>() -> Result<T> {
    bail!("internal: neither gate nor up present")
}

fn export_mlx(cfg: &AdapterConfig, pairs: &Pairs, dst: &Path) -> Result<()> {
    if let Some(t) = pairs.keys().map(|k| k.1).find(|t| !t.mlx()) {
        bail!(
            "mlx-lm adapts modules inside the last N decoder layers only, so a {t} adapter \
             cannot be exported to it: merge the adapter into the model instead (osstune merge)"
        );
    }
    let n = cfg.base_model.num_hidden_layers;
    let expected: Vec<usize> = (n - cfg.layers.len().min(n)..n).collect();
    if cfg.layers != expected {
        bail!(
            "mlx-lm adapts the last N layers only; this adapter has layers {:?}",
            cfg.layers
        );
    }
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (&(l, t), p) in pairs {
        let base = t.path(l);
        if p.a.dims().len() == 3 {
            out.push((format!("{base}.lora_a"), p.a.clone()));
            out.push((format!("{base}.lora_b"), p.b.clone()));
        } else {
            out.push((format!("{base}.lora_a"), p.a.t()?.contiguous()?));
            out.push((format!("{base}.lora_b"), p.b.t()?.contiguous()?));
        }
    }
    let keys: Vec<&str> = Target::ALL
        .into_iter()
        .filter(|t| cfg.targets.iter().any(|x| x == t.name()))
        .map(|t| t.module())
        .collect();
    let mcfg = json!({
        "fine_tune_type": "lora",
        "num_layers": cfg.layers.len(),
        "lora_parameters": {
            "rank": cfg.rank,
            "dropout": cfg.dropout,
            "scale": cfg.scale(),
            "keys": keys,
        },
        "osstune": { "fingerprint": cfg.base_model.fingerprint, "alpha": cfg.alpha },
    });
    write_atomic(&dst.join(WEIGHTS_FILE), &safetensors_bytes(&out)?)?;
    write_atomic(&dst.join(CONFIG_FILE), &serde_json::to_vec_pretty(&mcfg)?)
}

/// Reads a PEFT or mlx-lm adapter folder back into osstune's format for `base`.
pub fn import(src: &Path, dst: &Path, format: Format, base: &BaseModelInfo) -> Result<()> {
    let cpath = src.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&cpath).with_context(|| format!("reading {}", cpath.display()))?;
    let j: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", cpath.display()))?;
    let (tensors, rank, alpha, dropout) = match format {
        Format::Peft => {
            let w = src.join("adapter_model.safetensors");
            let r = j["r"]
                .as_u64()
                .with_context(|| format!("{}: no integer \"r\"", cpath.display()))?
                as usize;
            let alpha = j["lora_alpha"]
                .as_f64()
                .with_context(|| format!("{}: no \"lora_alpha\"", cpath.display()))?;
            if j["use_rslora"].as_bool() == Some(true) || j["use_dora"].as_bool() == Some(true) {
                bail!(
                    "{}: rsLoRA / DoRA adapters are not supported",
                    cpath.display()
                );
            }
            let d = j["lora_dropout"].as_f64().unwrap_or(0.0);
            let tp: Vec<String> = j["target_parameters"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let t = read_safetensors(&w, &Device::Cpu)?;
            (from_peft(t, base, &tp, &w)?, r, alpha, d)
        }
        Format::Mlx => {
            let w = src.join(WEIGHTS_FILE);
            let lp = &j["lora_parameters"];
            let r = lp["rank"]
                .as_u64()
                .with_context(|| format!("{}: no lora_parameters.rank", cpath.display()))?
                as usize;
            let scale = lp["scale"]
                .as_f64()
                .with_context(|| format!("{}: no lora_parameters.scale", cpath.display()))?;
            let d = lp["dropout"].as_f64().unwrap_or(0.0);
            (
                from_mlx(read_safetensors(&w, &Device::Cpu)?, &w)?,
                r,
                scale * r as f64,
                d,
            )
        }
    };
    let mut layers: Vec<usize> = Vec::new();
    let mut found: Vec<Target> = Vec::new();
    for n in tensors.keys() {
        let prefix = n.rsplit_once('.').map_or(n.as_str(), |x| x.0);
        let (t, l) = Target::from_path(prefix)
            .with_context(|| format!("tensor {n}: not a LoRA target osstune knows"))?;
        if t.per_layer() {
            if l >= base.num_hidden_layers {
                bail!(
                    "tensor {n}: layer {l} but the base has {} layers",
                    base.num_hidden_layers
                );
            }
            layers.push(l);
        }
        found.push(t);
    }
    layers.sort();
    layers.dedup();
    found.sort();
    found.dedup();
    let targets: Vec<String> = found.iter().map(|t| t.name().to_string()).collect();
    let cfg = AdapterConfig {
        format: "osstune-lora".into(),
        version: 1,
        rank,
        alpha,
        dropout,
        targets,
        layers,
        base_model: base.clone(),
    };
    let mut named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    write_atomic(&dst.join(WEIGHTS_FILE), &safetensors_bytes(&named)?)?;
    write_atomic(&dst.join(CONFIG_FILE), &serde_json::to_vec_pretty(&cfg)?)
}

fn from_mlx(t: HashMap<String, Tensor>, path: &Path) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (n, v) in t {
        if !(n.ends_with(".lora_a") || n.ends_with(".lora_b")) {
            bail!(
                "{}: unexpected tensor {n} (DoRA and full fine-tunes are not supported)",
                path.display()
            );
        }
        let v = if v.dims().len() == 2 {
            v.t()?.contiguous()?
        } else {
            v
        };
        out.insert(n, v);
    }
    Ok(out)
}

fn from_peft(
    mut t: HashMap<String, Tensor>,
    base: &BaseModelInfo,
    target_parameters: &[String],
    path: &Path,
) -> Result<HashMap<String, Tensor>> {
    let e = base.num_local_experts;
    let has = |p: &str| target_parameters.iter().any(|x| x.ends_with(p));
    let only_down = has("experts.down_proj") && !has("experts.gate_up_proj");
    let mut out = HashMap::new();
    let take = |t: &mut HashMap<String, Tensor>, n: &str| {
        t.remove(n)
            .with_context(|| format!("{}: missing tensor {n}", path.display()))
    };
    let mut layers: Vec<usize> = t
        .keys()
        .filter_map(|n| n.strip_prefix("base_model.model.model.layers."))
        .filter_map(|r| r.split('.').next()?.parse().ok())
        .collect();
    layers.sort();
    layers.dedup();
    // Dense targets: `base_model.model.{path}.lora_A.weight`, our orientation.
    let mut dense = |t: &mut HashMap<String, Tensor>, path: &str| -> Result<()> {
        let an = format!("base_model.model.{path}.lora_A.weight");
        if t.contains_key(&an) {
            let a = take(t, &an)?;
            let b = take(t, &format!("base_model.model.{path}.lora_B.weight"))?;
            out.insert(format!("{path}.lora_a"), a);
            out.insert(format!("{path}.lora_b"), b);
        }
        Ok(())
    };
    let dense_targets = || Target::ALL.into_iter().filter(|t| !t.is_expert());
    for tg in dense_targets().filter(|t| !t.per_layer()) {
        dense(&mut t, &tg.path(0))?;
    }
    for &l in &layers {
        for tg in dense_targets().filter(|t| t.per_layer()) {
            dense(&mut t, &tg.path(l))?;
        }
    }
    for l in layers {
        let pre = format!("base_model.model.model.layers.{l}");
        let outer = format!("{pre}.mlp.experts.lora_A.weight");
        let inner = format!("{pre}.mlp.experts.base_layer.lora_A.weight");
        // PEFT wraps the expert module once per targeted parameter, in target_parameters
        // order: with both, gate_up is the inner wrapper (`base_layer`) and down_proj the
        // outer; with one, it is the outer, named by target_parameters.
        let mut wrappers: Vec<(Tensor, Tensor, bool)> = Vec::new();
        if t.contains_key(&inner) {
            let a = take(&mut t, &inner)?;
            let b = take(&mut t, &inner.replace("lora_A", "lora_B"))?;
            wrappers.push((a, b, false));
        }
        if t.contains_key(&outer) {
            let a = take(&mut t, &outer)?;
            let b = take(&mut t, &outer.replace("lora_A", "lora_B"))?;
            let is_down = !wrappers.is_empty() || only_down;
            wrappers.push((a, b, is_down));
        }
        for (a, b, is_down) in wrappers {
            let a3 = from_peft_expert_a(&a, e)?;
            let b3 = from_peft_expert_b(&b, e)?;
            if is_down {
                out.insert(format!("model.layers.{l}.mlp.experts.down_proj.lora_a"), a3);
                out.insert(format!("model.layers.{l}.mlp.experts.down_proj.lora_b"), b3);
            } else {
                let (ee, two_i, r) = b3.dims3()?;
                let pairs = b3.reshape((ee, two_i / 2, 2, r))?;
                let gb = pairs.narrow(2, 0, 1)?.squeeze(2)?.contiguous()?;
                let ub = pairs.narrow(2, 1, 1)?.squeeze(2)?.contiguous()?;
                out.insert(
                    format!("model.layers.{l}.mlp.experts.gate_proj.lora_a"),
                    a3.clone(),
                );
                out.insert(format!("model.layers.{l}.mlp.experts.gate_proj.lora_b"), gb);
                out.insert(format!("model.layers.{l}.mlp.experts.up_proj.lora_a"), a3);
                out.insert(format!("model.layers.{l}.mlp.experts.up_proj.lora_b"), ub);
            }
        }
    }
    if let Some(n) = t.keys().next() {
        bail!(
            "{}: tensor {n} is not one osstune can import",
            path.display()
        );
    }
    Ok(out)
}
