//! The output plan: every tensor the merged checkpoint will hold, in write order, with the
//! recipe that produces it. Planning first lets the writer lay out shard headers before any
//! weight is computed (see `writer`).

use crate::adapter::Target;
use crate::base::{Base, Sel};
use crate::st::Dtype;
use crate::writer::Spec;
use anyhow::{bail, Result};
use osstune_model::quant::mxfp4::{GROUP, GROUP_BYTES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// transformers bf16 layout: dense `gate_up_proj` [E, H, 2I] / `down_proj` [E, I, H].
    Hf,
    /// HF layout with MXFP4 experts (`*_blocks` / `*_scales`), like the official release.
    HfMxfp4,
    /// mlx-lm layout, dense experts split into gate/up/down SwitchLinear.
    Mlx,
    /// mlx-lm layout with mxfp4 experts (U32 `weight` + U8 `scales`).
    MlxMxfp4,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        Ok(match s {
            "hf" => Format::Hf,
            "hf-mxfp4" => Format::HfMxfp4,
            "mlx" => Format::Mlx,
            "mlx-mxfp4" => Format::MlxMxfp4,
            _ => bail!("unknown format {s:?} (hf, hf-mxfp4, mlx, mlx-mxfp4)"),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Format::Hf => "hf",
            Format::HfMxfp4 => "hf-mxfp4",
            Format::Mlx => "mlx",
            Format::MlxMxfp4 => "mlx-mxfp4",
        }
    }
    pub fn is_mlx(self) -> bool {
        matches!(self, Format::Mlx | Format::MlxMxfp4)
    }
    pub fn is_mxfp4(self) -> bool {
        matches!(self, Format::HfMxfp4 | Format::MlxMxfp4)
    }
}

/// How expert rows are encoded into an output tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enc {
    /// Float rows; `transposed` = HF dense orientation ([in, out] per expert).
    Dense {
        transposed: bool,
    },
    /// MXFP4 packed bytes (HF `_blocks` or MLX U32 `weight`); the scales are kept for the
    /// `Scales` tensor that follows.
    Packed,
    Scales,
}

#[derive(Clone, Debug)]
pub enum Recipe {
    /// A float tensor copied (converted to the output dtype).
    Copy(String),
    /// An attention / router weight plus its adapter delta.
    Linear {
        src: String,
        layer: usize,
        target: Target,
    },
    Experts {
        layer: usize,
        sel: Sel,
        enc: Enc,
    },
    /// Expert bias: a selection of the fused gate/up bias, or the down bias.
    Bias {
        layer: usize,
        sel: Sel,
    },
}

pub struct Item {
    pub spec: Spec,
    pub recipe: Recipe,
}

/// Everything the merged checkpoint holds, in write order: embeddings, then layer by layer,
/// then the final norm and lm_head — so writing follows the streaming order.
pub fn plan(base: &Base, format: Format, dtype: Dtype) -> Result<Vec<Item>> {
    let t = &base.tensors;
    let mut items = Vec::new();
    let copy = |name: &str, items: &mut Vec<Item>| -> Result<()> {
        let info = t.info(name)?;
        if matches!(info.dtype, Dtype::U8 | Dtype::U32) {
            bail!(
                "{}: {name} is {}, expected a float tensor",
                t.file_of(name),
                info.dtype.name()
            );
        }
        items.push(Item {
            spec: Spec::new(name, dtype, &info.shape),
            recipe: Recipe::Copy(name.to_string()),
        });
        Ok(())
    };
    let (top_first, top_last): (Vec<&String>, Vec<&String>) = t
        .names()
        .filter(|n| !n.starts_with("model.layers."))
        .partition(|n| n.starts_with("model.embed_tokens."));
    for n in top_first {
        copy(n, &mut items)?;
    }
    for layer in 0..base.layers {
        let prefix = format!("model.layers.{layer}.");
        let mut any = false;
        for n in t.names().filter(|n| n.starts_with(&prefix)) {
            any = true;
            let rest = &n[prefix.len()..];
            if rest.starts_with("mlp.experts.") {
                continue;
            }
            let target = Target::ALL.into_iter().find(|tg| {
                tg.per_layer() && !tg.is_expert() && rest == format!("{}.weight", tg.module())
            });
            match target {
                Some(target) => {
                    let info = t.info(n)?;
                    items.push(Item {
                        spec: Spec::new(n.as_str(), dtype, &info.shape),
                        recipe: Recipe::Linear {
                            src: n.clone(),
                            layer,
                            target,
                        },
                    });
                }
                None => copy(n, &mut items)?,
            }
        }
        if !any {
            bail!("{}: no tensors for layer {layer}", base.dir.display());
        }
        experts(base, layer, format, dtype, &mut items);
    }
    for n in top_last {
        // Model-level targets (lm_head) take their adapter's delta like a layer's linear.
        let target = Target::ALL
            .into_iter()
            .find(|tg| !tg.per_layer() && *n == format!("{}.weight", tg.path(0)));
        if let Some(target) = target {
            items.push(Item {
                spec: Spec::new(n.as_str(), dtype, &t.info(n)?.shape),
                recipe: Recipe::Linear {
                    src: n.clone(),
                    layer: 0,
                    target,
                },
            });
            continue;
        }
        copy(n, &mut items)?;
    }
    Ok(items)
}

fn experts(base: &Base, layer: usize, format: Format, dtype: Dtype, items: &mut Vec<Item>) {
    let (e, h, i) = (base.experts, base.hidden, base.inter);
    let p = |leaf: &str| format!("model.layers.{layer}.mlp.experts.{leaf}");
    let mut push = |name: String, dt: Dtype, shape: &[usize], recipe: Recipe| {
        items.push(Item {
            spec: Spec::new(name, dt, shape),
            recipe,
        });
    };
    let ex = |sel, enc| Recipe::Experts { layer, sel, enc };
    let bias = |sel| Recipe::Bias { layer, sel };
    match format {
        Format::Hf => {
            let enc = Enc::Dense { transposed: true };
            push(
                p("gate_up_proj"),
                dtype,
                &[e, h, 2 * i],
                ex(Sel::GateUp, enc),
            );
            push(
                p("gate_up_proj_bias"),
                dtype,
                &[e, 2 * i],
                bias(Sel::GateUp),
            );
            push(p("down_proj"), dtype, &[e, i, h], ex(Sel::Down, enc));
            push(p("down_proj_bias"), dtype, &[e, h], bias(Sel::Down));
        }
        Format::HfMxfp4 => {
            for (leaf, sel, rows, inp) in [
                ("gate_up_proj", Sel::GateUp, 2 * i, h),
                ("down_proj", Sel::Down, h, i),
            ] {
                let g = inp / GROUP;
                push(
                    p(&format!("{leaf}_blocks")),
                    Dtype::U8,
                    &[e, rows, g, GROUP_BYTES],
                    ex(sel, Enc::Packed),
                );
                push(
                    p(&format!("{leaf}_scales")),
                    Dtype::U8,
                    &[e, rows, g],
                    ex(sel, Enc::Scales),
                );
                push(p(&format!("{leaf}_bias")), dtype, &[e, rows], bias(sel));
            }
        }
        Format::Mlx | Format::MlxMxfp4 => {
            for (leaf, sel, rows, inp) in [
                ("gate_proj", Sel::Gate, i, h),
                ("up_proj", Sel::Up, i, h),
                ("down_proj", Sel::Down, h, i),
            ] {
                if format == Format::Mlx {
                    let enc = Enc::Dense { transposed: false };
                    push(
                        p(&format!("{leaf}.weight")),
                        dtype,
                        &[e, rows, inp],
                        ex(sel, enc),
                    );
                } else {
                    push(
                        p(&format!("{leaf}.weight")),
                        Dtype::U32,
                        &[e, rows, inp / 8],
                        ex(sel, Enc::Packed),
                    );
                    push(
                        p(&format!("{leaf}.scales")),
                        Dtype::U8,
                        &[e, rows, inp / GROUP],
                        ex(sel, Enc::Scales),
                    );
                }
                push(p(&format!("{leaf}.bias")), dtype, &[e, rows], bias(sel));
            }
        }
    }
}

/// The merged model's config.json: the base's, with the quantization keys of the output.
pub fn output_config(base: &Base, format: Format, dtype: Dtype) -> serde_json::Value {
    let mut cfg = base.config.clone();
    let base_q = cfg.get("quantization_config").cloned();
    if let Some(o) = cfg.as_object_mut() {
        o.remove("quantization_config");
        o.remove("quantization");
        let torch = match dtype {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            _ => "bfloat16",
        };
        o.insert("torch_dtype".into(), torch.into());
        match format {
            Format::Hf | Format::Mlx => {}
            Format::HfMxfp4 => {
                let q = match base_q {
                    Some(q) if q.get("quant_method").and_then(|m| m.as_str()) == Some("mxfp4") => q,
                    _ => serde_json::json!({
                        "quant_method": "mxfp4",
                        "modules_to_not_convert": ["model.layers.*.self_attn",
                            "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
                    }),
                };
                o.insert("quantization_config".into(), q);
            }
            Format::MlxMxfp4 => {
                let q = serde_json::json!({ "group_size": 32, "bits": 4, "mode": "mxfp4" });
                o.insert("quantization".into(), q.clone());
                o.insert("quantization_config".into(), q);
            }
        }
    }
    cfg
}
