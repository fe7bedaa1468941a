//! One causal transformer layer computed from Burn's own `TransformerEncoderLayer` weights, with
//! what Burn's forward does not give: the largest attention logit of the layer (the quantity
//! whose growth Wortsman et al. 2023 §3.1 show precedes divergence at high learning rates) and an
//! optional layer norm on the queries and keys (qk-layernorm, Dehghani et al. 2023; Wortsman et
//! al. 2023 §3.1.1).
//!
//! Without qk-norm the arithmetic is Burn 0.22's `TransformerEncoderLayer::forward` op for op,
//! so a model trains bit for bit as it did through Burn's forward (tested).

use burn::module::Module;
use burn::nn::LayerNorm;
use burn::nn::LayerNormConfig;
use burn::nn::attention::MultiHeadAttention;
use burn::nn::transformer::TransformerEncoderLayer;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor};

/// Layer norms over each head's queries and keys (`d_k` features each), applied after the
/// projections and before the dot product: `softmax(LN(q)·LN(k)ᵀ/√d_k)`. With the layer norm's
/// scale at 1 and shift at 0 (their initialization) every query and key has zero mean and unit
/// RMS per head, so an attention logit is at most `√d_k` in magnitude until the scales grow.
#[derive(Module, Debug)]
pub struct QkNorm {
    /// The queries' layer norm.
    pub query: LayerNorm,
    /// The keys' layer norm.
    pub key: LayerNorm,
}

impl QkNorm {
    /// Layer norms over `d_k` features (Burn's default ε 1e-5).
    pub fn new(d_k: usize, device: &Device) -> Self {
        QkNorm {
            query: LayerNormConfig::new(d_k).init(device),
            key: LayerNormConfig::new(d_k).init(device),
        }
    }
}

/// What one layer computed.
#[derive(Debug)]
pub struct LayerOutput {
    /// The layer's output `[n, T, d]`.
    pub hidden: Tensor<3>,
    /// The largest attention logit `q·k/√d_k` over the batch, heads and allowed positions,
    /// off the autodiff graph (one value).
    pub logit_max: Tensor<1>,
}

/// The layer's forward pass over `x` `[n, T, d]` under the causal `mask` (`true` where a position
/// must not be attended to), with `qk` normalizing queries and keys when given.
pub fn layer_forward(
    layer: &TransformerEncoderLayer,
    qk: Option<&QkNorm>,
    x: Tensor<3>,
    mask: Tensor<3, Bool>,
) -> LayerOutput {
    let mut residual = x.clone();
    if layer.norm_first {
        residual = layer.norm_2.forward(residual);
    }
    let (context, logit_max) = self_attention(&layer.mha, qk, residual, mask);
    let mut x = x + layer.dropout.forward(context);
    let residual = if layer.norm_first {
        layer.norm_1.forward(x.clone())
    } else {
        x = layer.norm_1.forward(x);
        x.clone()
    };
    let residual = layer.dropout.forward(layer.pwff.forward(residual));
    let mut x = x + residual;
    if !layer.norm_first {
        x = layer.norm_2.forward(x);
    }
    LayerOutput {
        hidden: x,
        logit_max,
    }
}

/// Multi-head self-attention with Burn's weights: the context `[n, T, d]` and the largest logit.
fn self_attention(
    mha: &MultiHeadAttention,
    qk: Option<&QkNorm>,
    x: Tensor<3>,
    mask: Tensor<3, Bool>,
) -> (Tensor<3>, Tensor<1>) {
    let [n, t, d] = x.dims();
    let heads = |linear: &burn::nn::Linear, x: Tensor<3>| {
        linear
            .forward(x)
            .reshape([n, t, mha.n_heads, mha.d_k])
            .swap_dims(1, 2)
    };
    let mut query = heads(&mha.query, x.clone());
    let mut key = heads(&mha.key, x.clone());
    let value = heads(&mha.value, x);
    if let Some(norm) = qk {
        query = norm.query.forward(query);
        key = norm.key.forward(key);
    }
    let scores = query
        .matmul(key.transpose())
        .div_scalar((mha.d_k as f32).sqrt());
    let [_, t1, t2] = mask.dims();
    let scores = scores.mask_fill(mask.reshape([n, 1, t1, t2]), mha.min_float);
    // The diagonal is never masked, so the maximum is over attended positions unless every
    // logit is below `min_float` (-10⁴), where attention is dead anyway.
    let logit_max = scores.clone().detach().max();
    let weights = mha.dropout.forward(softmax(scores, 3));
    let context = weights.matmul(value).swap_dims(1, 2).reshape([n, t, d]);
    (mha.output.forward(context), logit_max)
}
