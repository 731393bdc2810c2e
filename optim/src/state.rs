//! Optimizer state on disk, for exact resume.
//!
//! `DIR/optimizer.safetensors`: f32 buffers, named `<param>.momentum` (Muon) and
//! `<param>.exp_avg` / `<param>.exp_avg_sq` (AdamW). `DIR/optimizer.json`: format, version,
//! the number of `step` calls, every parameter's group, shape and AdamW step count, and the
//! config used (for the record: `load` restores state, not hyper-parameters, so a resumed run
//! may change e.g. the lr). Both files are written as `X.tmp` then renamed.
//!
//! f32 values round-trip exactly through safetensors and the step counts are integers, so a
//! run resumed from this state continues bit-identically on the same device.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::adamw::AdamWState;
use crate::config::OptimConfig;
use crate::optimizer::{Optimizer, ParamState};

const FORMAT: &str = "osstune-optim";
const VERSION: u32 = 1;
const TENSORS: &str = "optimizer.safetensors";
const META: &str = "optimizer.json";

#[derive(Serialize, Deserialize)]
struct Meta {
    format: String,
    version: u32,
    steps: u64,
    params: Vec<ParamMeta>,
    config: OptimConfig,
}

#[derive(Serialize, Deserialize)]
struct ParamMeta {
    name: String,
    group: String,
    shape: Vec<usize>,
    /// AdamW's bias-correction step count (0 for Muon).
    step: u64,
}

impl Optimizer {
    /// Writes `dir/optimizer.safetensors` and `dir/optimizer.json` (creating `dir`).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let mut params = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let step = match &p.state {
                ParamState::Muon { momentum } => {
                    tensors.insert(format!("{}.momentum", p.name), momentum.clone());
                    0
                }
                ParamState::AdamW(s) => {
                    tensors.insert(format!("{}.exp_avg", p.name), s.m.clone());
                    tensors.insert(format!("{}.exp_avg_sq", p.name), s.v.clone());
                    s.t
                }
            };
            params.push(ParamMeta {
                name: p.name.clone(),
                group: p.group().as_str().to_string(),
                shape: p.var.dims().to_vec(),
                step,
            });
        }
        let path = dir.join(TENSORS);
        let tmp = dir.join(format!("{TENSORS}.tmp"));
        candle_core::safetensors::save(&tensors, &tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        rename(&tmp, &path)?;

        let meta = Meta {
            format: FORMAT.to_string(),
            version: VERSION,
            steps: self.steps,
            params,
            config: self.cfg.clone(),
        };
        let path = dir.join(META);
        let tmp = dir.join(format!("{META}.tmp"));
        let text = serde_json::to_string_pretty(&meta)?;
        std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        rename(&tmp, &path)
    }

    /// Restores state saved by [`Optimizer::save`] into an optimizer built over the same
    /// parameters (same names, shapes and routing). Buffers go to each parameter's device.
    pub fn load(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let meta_path = dir.join(META);
        let text = std::fs::read_to_string(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let meta: Meta = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", meta_path.display()))?;
        let where_ = meta_path.display();
        ensure!(
            meta.format == FORMAT && meta.version == VERSION,
            "{where_}: format {:?} version {} is not {FORMAT} version {VERSION}",
            meta.format,
            meta.version
        );
        let saved: HashMap<&str, &ParamMeta> =
            meta.params.iter().map(|p| (p.name.as_str(), p)).collect();
        ensure!(
            saved.len() == meta.params.len(),
            "{where_}: a parameter is listed twice"
        );
        for p in &self.params {
            let Some(m) = saved.get(p.name.as_str()) else {
                bail!("{where_}: no state for parameter {}", p.name);
            };
            ensure!(
                m.group == p.group().as_str() && m.shape == p.var.dims(),
                "{where_}: parameter {} was saved as {} {:?}, but is now {} {:?}",
                p.name,
                m.group,
                m.shape,
                p.group().as_str(),
                p.var.dims()
            );
        }
        if let Some(extra) = meta
            .params
            .iter()
            .find(|m| !self.params.iter().any(|p| p.name == m.name))
        {
            bail!(
                "{where_}: state for parameter {} which this optimizer does not have",
                extra.name
            );
        }

        let st_path = dir.join(TENSORS);
        let tensors = candle_core::safetensors::load(&st_path, &candle_core::Device::Cpu)
            .with_context(|| format!("reading {}", st_path.display()))?;
        let get = |name: String, like: &Tensor| -> Result<Tensor> {
            let t = tensors
                .get(&name)
                .with_context(|| format!("{}: tensor {name} is missing", st_path.display()))?;
            ensure!(
                t.dtype() == DType::F32 && t.dims() == like.dims(),
                "{}: tensor {name} is {:?} {:?}, expected F32 {:?}",
                st_path.display(),
                t.dtype(),
                t.dims(),
                like.dims()
            );
            Ok(t.to_device(like.device())?)
        };
        // Read everything before touching the optimizer, so a bad file leaves it unchanged.
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let state = match &p.state {
                ParamState::Muon { momentum } => ParamState::Muon {
                    momentum: get(format!("{}.momentum", p.name), momentum)?,
                },
                ParamState::AdamW(s) => ParamState::AdamW(AdamWState {
                    m: get(format!("{}.exp_avg", p.name), &s.m)?,
                    v: get(format!("{}.exp_avg_sq", p.name), &s.v)?,
                    t: saved
                        .get(p.name.as_str())
                        .with_context(|| format!("{where_}: no state for parameter {}", p.name))?
                        .step,
                }),
            };
            restored.push(state);
        }
        for (p, state) in self.params.iter_mut().zip(restored) {
            p.state = state;
        }
        self.steps = meta.steps;
        Ok(())
    }
}

fn rename(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
