//! A causal transformer language model built from Burn's own `TransformerEncoder`: token and
//! learned position embeddings, `depth` encoder layers under a causal mask, a final layer norm
//! (pre-norm) and a linear read-out to the vocabulary — the shape of GPT-2 (Radford et al. 2019)
//! at a size two CPU cores train in seconds.

use burn::module::Module;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
    attention::generate_autoregressive_mask,
};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::LabError;

/// Shape of a [`LmTransformer`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// Symbols in the vocabulary.
    pub vocab: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Model width d (the feed-forward width is 4d).
    pub width: usize,
    /// Attention heads (must divide `width`).
    pub heads: usize,
    /// Longest input (the position embedding's length).
    pub context: usize,
    /// Layer norm before each sub-layer (pre-norm, GPT-2) or after the residual sum (post-norm,
    /// Vaswani et al. 2017).
    pub pre_norm: bool,
    /// Standard deviation of the embeddings' normal initialization (GPT-2's is 0.02).
    pub embed_std: f64,
}

impl TransformerConfig {
    /// Builds the model on `device` (Burn's initializers, seeded by the caller's device seed).
    pub fn init(&self, device: &Device) -> Result<LmTransformer, LabError> {
        if self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return Err(LabError::Config(format!(
                "the width ({}) must be a multiple of the number of heads ({})",
                self.width, self.heads
            )));
        }
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, self.width)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.embed_std,
                })
                .init(device)
        };
        let encoder =
            TransformerEncoderConfig::new(self.width, 4 * self.width, self.heads, self.layers)
                .with_dropout(0.0)
                .with_norm_first(self.pre_norm)
                .init(device);
        Ok(LmTransformer {
            tokens: embedding(self.vocab),
            positions: embedding(self.context),
            encoder,
            final_norm: self
                .pre_norm
                .then(|| LayerNormConfig::new(self.width).init(device)),
            head: LinearConfig::new(self.width, self.vocab).init(device),
        })
    }
}

/// A decoder-only transformer: `logits = head(norm(encoder(tok(x) + pos), causal))`.
#[derive(Module, Debug)]
pub struct LmTransformer {
    /// Token embedding.
    pub tokens: Embedding,
    /// Learned position embedding.
    pub positions: Embedding,
    /// The layers (self-attention and feed-forward, residual).
    pub encoder: TransformerEncoder,
    /// The final layer norm of a pre-norm model.
    pub final_norm: Option<LayerNorm>,
    /// Read-out to the vocabulary.
    pub head: Linear,
}

impl LmTransformer {
    /// Next-symbol logits `[n·T, vocab]` (row `b·T + t` predicts symbol `t + 1` of window `b`)
    /// for symbol indices `[n, T]`; position `t` sees symbols `0..=t` only.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        let [n, t] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .expand([n, t]);
        let x = self.tokens.forward(ids) + self.positions.forward(positions);
        let mask = generate_autoregressive_mask(n, t, &device);
        let mut h = self
            .encoder
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        if let Some(norm) = &self.final_norm {
            h = norm.forward(h);
        }
        let logits = self.head.forward(h);
        let vocab = logits.dims()[2];
        logits.reshape([n * t, vocab])
    }
}
