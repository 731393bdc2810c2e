//! `osstune bench …`: benchmarks of release builds. One file per thing measured.

mod cost;
mod data;
mod forward;
mod kernels;
mod machine;
mod merge;
mod optim;
mod preset;
mod serve;
mod train;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode tokens/s of the model (bench preset by default; --preset
    /// gpt-oss-20b|gpt-oss-120b for the release shapes), against the machine's bounds.
    Forward(forward::Args),
    /// The frozen-weight products alone (bf16 x·Wᵀ, MXFP4 experts) at gpt-oss shapes: GB/s
    /// of weights against the read bandwidth, GFLOP/s.
    Kernels(kernels::Args),
    /// LoRA training tokens/s and peak RSS (bench preset, batch 2 × 512).
    Train(train::Args),
    /// One Muon / AdamW step on a realistic LoRA parameter set.
    Optim(optim::Args),
    /// Session-log conversion throughput.
    Data(data::Args),
    /// Merge time and peak memory.
    Merge(merge::Args),
    /// `osstune serve`: time to first token and tokens/s for 1/4/8 clients, prefix cache on/off.
    Serve(serve::Args),
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Forward(a) => forward::run(a),
        BenchCommand::Kernels(a) => kernels::run(a),
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Optim(a) => optim::run(a),
        BenchCommand::Data(a) => data::run(a),
        BenchCommand::Merge(a) => merge::run(a),
        BenchCommand::Serve(a) => serve::run(a),
    }
}
