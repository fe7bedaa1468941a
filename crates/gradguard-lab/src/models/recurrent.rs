//! Recurrent networks — a vanilla tanh RNN, an LSTM and a GRU — whose recurrent weight's
//! initialization gain is the knob (Pascanu et al. 2013: the backward pass multiplies by the
//! recurrent Jacobian once per time step, so its spectral radius decides explosion).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::init::{Init, draw_weight, linear, weight_rng};
use crate::error::LabError;

pub use gradguard_report::schemes::Cell;

/// Shape and initialization of a [`RecurrentNet`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecurrentConfig {
    /// Input features per time step.
    pub inputs: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Outputs read from the last hidden state.
    pub outputs: usize,
    /// The cell.
    pub cell: Cell,
    /// How the recurrent weight `U` is drawn (input weights are Xavier, gain 1).
    pub init: Init,
    /// Multiplies the recurrent scheme's standard deviation.
    pub init_gain: f64,
}

impl RecurrentConfig {
    /// The network on `device`, its weights drawn from `seed`.
    pub fn init(&self, device: &Device, seed: u64) -> Result<RecurrentNet, LabError> {
        if self.inputs == 0 || self.hidden == 0 || self.outputs == 0 {
            return Err(LabError::Config(format!(
                "inputs, hidden and outputs must be at least 1, got hidden {}",
                self.hidden
            )));
        }
        if !(self.init_gain > 0.0 && self.init_gain.is_finite()) {
            return Err(LabError::Config(format!(
                "init gain must be a positive number, got {}",
                self.init_gain
            )));
        }
        if self.init == Init::Lsuv {
            return Err(LabError::Config(
                "lsuv initializes the mlp task's layers; recurrent tasks take gaussian, xavier, \
                 he or orthogonal"
                    .into(),
            ));
        }
        let k = self.cell.gates() * self.hidden;
        let mut rng = weight_rng(seed);
        let w_in = draw_weight(Init::Xavier, 1.0, self.inputs, k, &mut rng);
        let mut bias = vec![0.0f32; k];
        if self.cell == Cell::Lstm {
            // Gate order i, f, g, o: the forget gate starts open.
            bias[self.hidden..2 * self.hidden].fill(1.0);
        }
        let input = linear(self.inputs, k, w_in, Some(bias), device);
        let w_rec = draw_weight(self.init, self.init_gain, self.hidden, k, &mut rng);
        let recurrent = linear(self.hidden, k, w_rec, None, device);
        let w_head = draw_weight(Init::Xavier, 1.0, self.hidden, self.outputs, &mut rng);
        let head = linear(
            self.hidden,
            self.outputs,
            w_head,
            Some(vec![0.0; self.outputs]),
            device,
        );
        Ok(RecurrentNet {
            input,
            recurrent,
            head,
            cell: self.cell,
            hidden: self.hidden,
        })
    }
}

/// A recurrent network reading a sequence and predicting from its last hidden state.
#[derive(Module, Debug)]
pub struct RecurrentNet {
    input: Linear,
    recurrent: Linear,
    head: Linear,
    #[module(skip)]
    cell: Cell,
    #[module(skip)]
    hidden: usize,
}

impl RecurrentNet {
    /// The input projections of every step at once, `[n, T, gates × hidden]`.
    pub fn project(&self, x: Tensor<3>) -> Tensor<3> {
        self.input.forward(x)
    }

    /// Hidden units.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The cell.
    pub fn cell(&self) -> Cell {
        self.cell
    }

    /// One time step: the state `(h, c)` after reading the projected input `xt` (`c` is the
    /// LSTM's cell state and passes through unchanged for the other cells).
    pub fn step(&self, xt: Tensor<2>, h: Tensor<2>, c: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let uh = self.recurrent.forward(h.clone());
        match self.cell {
            Cell::Rnn => ((xt + uh).tanh(), c),
            Cell::Lstm => {
                let mut z = (xt + uh).chunk(4, 1).into_iter();
                let mut next = || z.next().expect("four gates");
                let (i, f, g, o) = (sigmoid(next()), sigmoid(next()), next().tanh(), next());
                let c = f * c + i * g;
                (sigmoid(o) * c.clone().tanh(), c)
            }
            Cell::Gru => {
                let x3 = xt.chunk(3, 1);
                let h3 = uh.chunk(3, 1);
                let r = sigmoid(x3[0].clone() + h3[0].clone());
                let u = sigmoid(x3[1].clone() + h3[1].clone());
                let candidate = (x3[2].clone() + r * h3[2].clone()).tanh();
                (candidate.clone() + u * (h - candidate), c)
            }
        }
    }

    /// Outputs `[n, outputs]` for sequences `[n, T, inputs]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        self.forward_probed(x, &[])
    }

    /// [`RecurrentNet::forward`] with `probes[t]` (`[n, hidden]`, zeros) added to the hidden
    /// state after step t: the gradient of the loss with respect to a probe is the gradient with
    /// respect to that hidden state, ∂L/∂h_t, which autodiff does not keep for intermediate
    /// values. Steps beyond `probes` get none.
    pub fn forward_probed(&self, x: Tensor<3>, probes: &[Tensor<2>]) -> Tensor<2> {
        let [n, steps, _] = x.dims();
        let k = self.cell.gates() * self.hidden;
        // Input projections of every step at once; only the recurrence is sequential.
        let projected = self.project(x);
        let mut h: Tensor<2> =
            Tensor::<2>::zeros([n, self.hidden], &projected.device()).cast(projected.dtype());
        let mut c = h.clone();
        for t in 0..steps {
            let xt = projected.clone().narrow(1, t, 1).reshape([n, k]);
            (h, c) = self.step(xt, h, c);
            if let Some(p) = probes.get(t) {
                h = h.clone() + p.clone().cast(h.dtype());
            }
        }
        self.head.forward(h)
    }
}
