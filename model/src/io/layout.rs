//! Which of the gpt-oss checkpoint layouts a folder holds (docs/gpt-oss.md §2): the one
//! detector, shared by loading (`io::load`) and merging (osstune-merge's `Base`).

/// How the experts of a checkpoint are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertLayout {
    /// Hugging Face release: `gate_up_proj_blocks` / `_scales` (MXFP4), gate/up rows
    /// interleaved.
    HfMxfp4,
    /// Hugging Face dequantized: `gate_up_proj` `[E, H, 2I]` (x @ W orientation).
    HfDense,
    /// mlx-lm: split `gate_proj` / `up_proj` / `down_proj` SwitchLinear `[E, out, in]`,
    /// `quantized` when `.scales` sit beside the weights (MXFP4 or affine, per config).
    Mlx { quantized: bool },
}

impl ExpertLayout {
    /// The layout of layer `layer`'s experts, from which tensor names exist.
    pub fn detect(contains: impl Fn(&str) -> bool, layer: usize) -> Option<ExpertLayout> {
        let p = |leaf: &str| format!("model.layers.{layer}.mlp.experts.{leaf}");
        if contains(&p("gate_up_proj_blocks")) {
            Some(ExpertLayout::HfMxfp4)
        } else if contains(&p("gate_up_proj")) {
            Some(ExpertLayout::HfDense)
        } else if contains(&p("gate_proj.weight")) {
            Some(ExpertLayout::Mlx {
                quantized: contains(&p("gate_proj.scales")),
            })
        } else {
            None
        }
    }

    /// What was looked for, for the error when nothing matched.
    pub fn expected(layer: usize) -> String {
        let p = format!("model.layers.{layer}.mlp.experts");
        format!(
            "{p}.gate_up_proj_blocks (MXFP4), {p}.gate_up_proj (dense) or {p}.gate_proj.weight \
             (MLX)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_layout() {
        let with = |names: &'static [&'static str]| {
            move |n: &str| {
                names
                    .iter()
                    .any(|x| format!("model.layers.2.mlp.experts.{x}") == n)
            }
        };
        let d = |names| ExpertLayout::detect(with(names), 2);
        assert_eq!(d(&["gate_up_proj_blocks"]), Some(ExpertLayout::HfMxfp4));
        assert_eq!(d(&["gate_up_proj"]), Some(ExpertLayout::HfDense));
        let mlx_q = Some(ExpertLayout::Mlx { quantized: true });
        assert_eq!(d(&["gate_proj.weight", "gate_proj.scales"]), mlx_q);
        assert_eq!(
            d(&["gate_proj.weight"]),
            Some(ExpertLayout::Mlx { quantized: false })
        );
        assert_eq!(d(&["down_proj"]), None);
        assert!(ExpertLayout::expected(2).contains("layers.2"));
    }
}
