//! Times one LoRA training step's forward + backward on a checkpoint (default: the bench
//! preset written to a temp dir). Release builds only:
//!     cargo run --release -p osstune-model --example train_step -- [DIR] [--mxfp4] [--steps N]
//! The optimizer is not included (that is the trainer's); `osstune bench train` is the
//! end-to-end number.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};
use osstune_model::{GptOss, Lora};
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mxfp4 = args.iter().any(|a| a == "--mxfp4");
    let steps: usize = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dir = match args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
    {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let d = std::env::temp_dir().join(format!(
                "osstune-bench-{}",
                if mxfp4 { "mxfp4" } else { "dense" }
            ));
            let fmt = if mxfp4 {
                ExpertFormat::Mxfp4
            } else {
                ExpertFormat::Dense
            };
            write_tiny(&d, Preset::Bench, 0, fmt)?;
            d
        }
    };
    let dev = Device::Cpu;
    let mut m = GptOss::load(&dir, &dev, DType::F32)?;
    let (r, alpha) = (16usize, 32.0f64);
    let mut n_train = 0;
    for t in m.lora_targets() {
        let bound = 1.0 / (t.in_dim as f64).sqrt();
        match t.experts {
            None => {
                let a = Var::rand(-bound as f32, bound as f32, (r, t.in_dim), &dev)?;
                let b = Var::zeros((t.out_dim, r), DType::F32, &dev)?;
                n_train += a.elem_count() + b.elem_count();
                m.attach_lora(&t.name, Lora::new(a, b, alpha / r as f64)?)?;
            }
            Some(e) => {
                let a = Var::rand(-bound as f32, bound as f32, (e, r, t.in_dim), &dev)?;
                let b = Var::zeros((e, t.out_dim, r), DType::F32, &dev)?;
                n_train += a.elem_count() + b.elem_count();
                m.attach_lora(&t.name, Lora::new(a, b, alpha / r as f64)?)?;
            }
        }
    }
    let (bsz, t) = (2usize, 512usize);
    let v = m.config().vocab_size as u32;
    println!("{} trainable params, B={bsz} T={t}", n_train);
    let mut times = Vec::new();
    for step in 0..steps {
        let ids: Vec<u32> = (0..bsz * t)
            .map(|i| ((i as u64 * 2654435761 + step as u64) % v as u64) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (bsz, t), &dev)?;
        let t0 = Instant::now();
        let h = m.forward_hidden(&ids)?;
        let logits = m.logits(&h)?;
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let tgt = ids.narrow(1, 1, t - 1)?.unsqueeze(2)?;
        let loss = lsm
            .narrow(1, 0, t - 1)?
            .contiguous()?
            .gather(&tgt.contiguous()?, 2)?
            .mean_all()?
            .neg()?;
        let t1 = Instant::now();
        let _grads = loss.backward()?;
        let t2 = Instant::now();
        let (f, b) = ((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
        println!(
            "step {step}: loss {:.4} fwd {:.3}s bwd {:.3}s → {:.0} tok/s",
            loss.to_scalar::<f32>()?,
            f,
            b,
            (bsz * t) as f64 / (f + b)
        );
        times.push(f + b);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let med = times[times.len() / 2];
    println!(
        "median {med:.3}s/step = {:.0} tokens/s (forward+backward, no optimizer)",
        (bsz * t) as f64 / med
    );
    Ok(())
}
