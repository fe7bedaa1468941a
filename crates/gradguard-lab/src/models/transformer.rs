//! A causal transformer language model built from Burn's own `TransformerEncoder`: token and
//! learned position embeddings, `depth` encoder layers under a causal mask, a final layer norm
//! (pre-norm) and a linear read-out to the vocabulary — the shape of GPT-2 (Radford et al. 2019)
//! at a size two CPU cores train in seconds. The layers are computed by [`super::attention`]
//! (Burn's arithmetic, plus each layer's largest attention logit and optional qk-layernorm).

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
    attention::generate_autoregressive_mask,
};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::attention::{QkNorm, layer_forward};
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
    /// Layer norm on every attention's queries and keys ([`QkNorm`]).
    #[serde(default)]
    pub qk_norm: bool,
}

impl TransformerConfig {
    /// Builds the model on `device`: Burn's initializers, drawn here from the caller's device
    /// seed.
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
        let d_k = self.width / self.heads;
        let model = LmTransformer {
            tokens: embedding(self.vocab),
            positions: embedding(self.context),
            encoder,
            qk_norms: if self.qk_norm {
                (0..self.layers).map(|_| QkNorm::new(d_k, device)).collect()
            } else {
                Vec::new()
            },
            final_norm: self
                .pre_norm
                .then(|| LayerNormConfig::new(self.width).init(device)),
            head: LinearConfig::new(self.width, self.vocab).init(device),
        };
        model.visit(&mut DrawNow);
        Ok(model)
    }
}

/// Draws every lazily initialized parameter of a module now. Burn initializes a parameter from
/// the device's random generator at its first use, not where its module is built: a model used
/// later, beside another thread drawing from the same generator (a sweep's parallel runs), would
/// get numbers its seed did not choose.
struct DrawNow;

impl ModuleVisitor for DrawNow {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
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
    /// One [`QkNorm`] per layer with qk-layernorm, none without (a model without them stores
    /// exactly the parameters it stored before qk-norm existed).
    pub qk_norms: Vec<QkNorm>,
    /// The final layer norm of a pre-norm model.
    pub final_norm: Option<LayerNorm>,
    /// Read-out to the vocabulary.
    pub head: Linear,
}

/// What a forward pass of [`LmTransformer`] computed.
#[derive(Debug)]
pub struct LmOutput {
    /// Next-symbol logits `[n·T, vocab]`.
    pub logits: Tensor<2>,
    /// Each layer's largest attention logit, in layer order `[layers]`, off the autodiff graph.
    pub attention_logit_max: Tensor<1>,
}

impl LmTransformer {
    /// Next-symbol logits `[n·T, vocab]` (row `b·T + t` predicts symbol `t + 1` of window `b`)
    /// for symbol indices `[n, T]`; position `t` sees symbols `0..=t` only.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        self.forward_observed(ids).logits
    }

    /// [`LmTransformer::forward`], with each layer's largest attention logit.
    pub fn forward_observed(&self, ids: Tensor<2, Int>) -> LmOutput {
        let [n, t] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .expand([n, t]);
        let mut h = self.tokens.forward(ids) + self.positions.forward(positions);
        let mask = generate_autoregressive_mask(n, t, &device);
        let mut maxima = Vec::with_capacity(self.encoder.layers.len());
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            let out = layer_forward(layer, self.qk_norms.get(i), h, mask.clone());
            h = out.hidden;
            maxima.push(out.logit_max);
        }
        if let Some(norm) = &self.final_norm {
            h = norm.forward(h);
        }
        let logits = self.head.forward(h);
        let vocab = logits.dims()[2];
        LmOutput {
            logits: logits.reshape([n * t, vocab]),
            attention_logit_max: Tensor::cat(maxima, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::ModuleMapper;
    use burn::nn::transformer::TransformerEncoderInput;
    use burn::tensor::TensorData;

    use super::*;

    fn config(qk_norm: bool) -> TransformerConfig {
        TransformerConfig {
            vocab: 11,
            layers: 2,
            width: 16,
            heads: 2,
            context: 8,
            pre_norm: true,
            embed_std: 0.5,
            qk_norm,
        }
    }

    fn ids(device: &Device) -> Tensor<2, Int> {
        let v: Vec<i64> = (0..24).map(|i| (i * 7 + 3) % 11).collect();
        Tensor::from_data(TensorData::new(v, [3, 8]), device)
    }

    /// Counts the parameters drawn so far and all of them.
    #[derive(Default)]
    struct Drawn {
        drawn: usize,
        all: usize,
    }
    impl ModuleVisitor for Drawn {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.all += 1;
            self.drawn += usize::from(param.is_initialized());
        }
    }

    #[test]
    fn every_weight_is_drawn_when_the_model_is_built_not_at_its_first_use() {
        // Burn draws a parameter at its first use unless asked earlier: a sweep's other run
        // could then draw from the device's generator between the seed and the weights.
        let device = Device::flex();
        for qk_norm in [false, true] {
            let model = config(qk_norm).init(&device).unwrap();
            let mut count = Drawn::default();
            model.visit(&mut count);
            assert!(count.all > 20, "{} parameters", count.all);
            assert_eq!(count.drawn, count.all, "qk-norm {qk_norm}");
        }
    }

    #[test]
    fn without_qk_norm_the_layers_compute_what_burns_encoder_computes() {
        let device = Device::flex();
        for pre_norm in [true, false] {
            device.seed(7);
            let model = TransformerConfig {
                pre_norm,
                ..config(false)
            }
            .init(&device)
            .unwrap();
            let ours: Vec<f32> = model
                .forward(ids(&device))
                .into_data()
                .try_to_vec()
                .unwrap();
            // The same weights through Burn's own forward.
            let [n, t] = [3, 8];
            let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
                .reshape([1, t])
                .expand([n, t]);
            let x = model.tokens.forward(ids(&device)) + model.positions.forward(positions);
            let mask = generate_autoregressive_mask(n, t, &device);
            let mut h = model
                .encoder
                .forward(TransformerEncoderInput::new(x).mask_attn(mask));
            if let Some(norm) = &model.final_norm {
                h = norm.forward(h);
            }
            let burns: Vec<f32> = model
                .head
                .forward(h)
                .reshape([n * t, 11])
                .into_data()
                .try_to_vec()
                .unwrap();
            assert_eq!(ours, burns, "pre-norm {pre_norm}");
        }
    }

    /// Multiplies every query and key projection weight by `factor`.
    struct ScaleQk(f32);
    impl ModuleMapper for ScaleQk {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|w| w * self.0)
        }
    }

    fn largest_logit(model: &LmTransformer, device: &Device) -> f32 {
        model
            .forward_observed(ids(device))
            .attention_logit_max
            .max()
            .into_scalar::<f32>()
    }

    #[test]
    fn qk_norm_gives_unit_rms_queries_and_bounds_the_logits() {
        let device = Device::flex();
        device.seed(3);
        let plain = config(false).init(&device).unwrap();
        device.seed(3);
        let normed = config(true).init(&device).unwrap();
        assert_eq!(normed.qk_norms.len(), 2);
        assert_eq!(plain.qk_norms.len(), 0);
        // The normalized queries and keys of a head have unit RMS (up to the layer norm's ε).
        let x = Tensor::<3>::random(
            [3, 8, 16],
            burn::tensor::Distribution::Normal(0.0, 3.0),
            &device,
        );
        let mha = &normed.encoder.layers[0].mha;
        for (linear, norm) in [
            (&mha.query, &normed.qk_norms[0].query),
            (&mha.key, &normed.qk_norms[0].key),
        ] {
            let heads = linear.forward(x.clone()).reshape([3, 8, 2, 8]);
            let rms: Vec<f32> = norm
                .forward(heads)
                .powi_scalar(2)
                .mean_dim(3)
                .sqrt()
                .into_data()
                .try_to_vec()
                .unwrap();
            assert!(rms.iter().all(|r| (r - 1.0).abs() < 1e-3), "{rms:?}");
        }
        // Scaling the projections up makes plain logits grow with the square of the scale;
        // normalized ones stay at most √d_k (Cauchy–Schwarz on unit-RMS vectors of length d_k).
        let scale_qk = |m: LmTransformer| {
            let mut m = m;
            for layer in &mut m.encoder.layers {
                layer.mha.query = layer.mha.query.clone().map(&mut ScaleQk(20.0));
                layer.mha.key = layer.mha.key.clone().map(&mut ScaleQk(20.0));
            }
            m
        };
        let before = largest_logit(&plain, &device);
        let plain_big = largest_logit(&scale_qk(plain), &device);
        let normed_big = largest_logit(&scale_qk(normed), &device);
        assert!(plain_big > 100.0 * before, "{before} → {plain_big}");
        assert!(normed_big <= 8f32.sqrt() + 1e-3, "{normed_big}");
    }
}
