//! The floating-point format a run computes in: f32, or mixed precision with f16 or bf16.
//!
//! Mixed precision as PyTorch's autocast practises it (Micikevicius et al. 2018, "Mixed Precision
//! Training"): the weights stay in f32 (the *master* copy the optimizer updates), each forward
//! pass casts them and the inputs to the half format, the network runs in it, and its outputs are
//! cast back to f32 for the loss. The backward pass therefore runs in the half format too, and the
//! gradient reaching each f32 weight is a half-precision value cast up: in f16 (smallest normal
//! 2⁻¹⁴ ≈ 6.1e-5, smallest subnormal 2⁻²⁴ ≈ 6e-8, largest 65,504) small gradients round to zero
//! and large ones overflow to inf. Dynamic loss scaling (the `loss-scale` remedy) multiplies the
//! loss by `S` before the backward pass, so the half-precision gradients are `S` times larger,
//! and the guard divides by `S` in f32. bf16 keeps f32's exponent range (it rarely underflows)
//! but only 8 significant bits.
//!
//! Unlike autocast, every operation of the network runs in the half format (autocast keeps
//! reductions such as softmax in f32); the loss itself is computed in f32.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The format of the forward and backward passes (the weights are f32 in every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// IEEE half precision: 5 exponent bits, 11 significant bits.
    F16,
    /// bfloat16: f32's 8 exponent bits, 8 significant bits.
    Bf16,
}

impl Precision {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this is plain f32 (for `skip_serializing_if`: f32 configurations keep the form
    /// they had before precisions existed).
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The half format's Burn dtype, `None` for f32.
    fn half(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some(DType::F16),
            Precision::Bf16 => Some(DType::BF16),
        }
    }

    /// `module` with every float parameter cast to this format, on the autodiff graph: the
    /// gradients flow back to the f32 parameters through the cast. f32 returns `module` as is.
    pub fn cast_module<M: Module>(self, module: &M) -> Option<M> {
        struct Cast(DType);
        impl ModuleMapper for Cast {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let dtype = self.0;
                param.map(|t| t.cast(dtype))
            }
        }
        let dtype = self.half()?;
        Some(module.clone().map(&mut Cast(dtype)))
    }

    /// `x` in this format (unchanged for f32).
    pub fn cast_input<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self.half() {
            Some(dtype) => x.cast(dtype),
            None => x,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision '{other}' (expected f32, f16 or bf16)"
            )),
        }
    }
}
