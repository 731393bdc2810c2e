//! What the ops keep in memory, for `osstune train --plan` (train/src/plan.rs): one function
//! per op whose memory the plan models, with an arm per backend that keeps something other
//! than the reference composition. A backend added to an op's dispatch adds its arm here.
//! The constants were fitted against measured peak RSS together with the rest of the plan.

use crate::kernels::Backend;

/// Whether the loader leaves the frozen weights where they lie in the checkpoint's memory map
/// for this backend (the CPU kernels read bf16 / f16 / MXFP4 bytes in place; the reference
/// composition needs tensors of the compute dtype). Mapped weights count in the resident set
/// once read (the load-time value scan reads every byte) but are clean file pages, not heap.
pub fn weights_stay_mapped(backend: Option<Backend>) -> bool {
    matches!(backend, Some(Backend::Cpu))
}

/// Floats the attention core keeps per query row and head until the backward, for `t`
/// positions: the CPU kernel keeps one log-sum-exp (flash-attention's scheme); the reference
/// composition keeps `[T]` scores, probabilities and their masked copy.
pub fn attention_floats_per_row(backend: Option<Backend>, t: u64) -> u64 {
    match backend {
        Some(Backend::Cpu) => 1,
        _ => 3 * t,
    }
}

/// Floats the MoE's expert half keeps per routed row (token × chosen expert) for hidden size
/// `h` and intermediate size `i`: the fused CPU op keeps the pre-activation and the expert
/// output; the composition also the gathered rows, the activation and the LoRA intermediates.
pub fn moe_floats_per_routed_row(backend: Option<Backend>, h: u64, i: u64) -> u64 {
    match backend {
        Some(Backend::Cpu) => 2 * h + 4 * i,
        _ => 3 * h + 10 * i,
    }
}

/// Bytes of the packed f32 copy of one layer's expert adapters (`expert_lora_params` values)
/// the fused CPU MoE op takes, kept until that layer's backward.
pub fn moe_packed_adapter_bytes(backend: Option<Backend>, expert_lora_params: u64) -> u64 {
    match backend {
        Some(Backend::Cpu) => expert_lora_params * 4,
        _ => 0,
    }
}

/// Whether `linear`'s backward forms a gradient of its constant weight (candle's matmul
/// backward does; the CPU kernel does not), so that a dense copy of the weights it multiplied
/// exists at the end of the backward.
pub fn linear_forms_weight_grad(backend: Option<Backend>) -> bool {
    !matches!(backend, Some(Backend::Cpu))
}

/// The shapes `linear_cross_entropy`'s workspace depends on.
#[derive(Debug, Clone, Copy)]
pub struct LossShape {
    /// Threads of the CPU kernel (one block of logits each).
    pub threads: u64,
    pub vocab: u64,
    pub hidden: u64,
    /// Rows of hidden states gathered for the loss.
    pub rows: u64,
    /// Rows per chunk of the reference composition.
    pub chunk_rows: u64,
}

/// Bytes `linear_cross_entropy` holds at its peak: on the CPU one block of ≤ 512 rows
/// (≤ 8 M logits) per thread plus the gathered rows and their gradient; the reference one
/// chunk of logits four times (tensor, host copy, gradient and its tensor).
pub fn linear_cross_entropy_bytes(backend: Option<Backend>, s: LossShape) -> u64 {
    match backend {
        Some(Backend::Cpu) => {
            crate::kernels::cpu::linear_ce::workspace_bytes(s.threads, s.vocab)
                + 2 * s.rows * s.hidden * 4
        }
        _ => s.chunk_rows * s.vocab * 4 * 4,
    }
}
