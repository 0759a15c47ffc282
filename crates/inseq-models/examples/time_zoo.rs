use burn::tensor::{Device, Tensor};
use inseq_models::{ForwardOptions, ModelInput, ids_tensor, load_pretrained};
use std::time::Instant;

fn main() {
    let device = Device::default();
    for name in std::env::args().skip(1) {
        let dir = format!(
            "{}/../../tests/fixtures/models/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let m = load_pretrained(&dir, &device).unwrap();
        let model = m.model.as_ref();
        let len = 96;
        let ids: Vec<Vec<usize>> = (0..4)
            .map(|r| (0..len).map(|i| (i * 7 + r * 13) % 300 + 4).collect())
            .collect();
        let input = || ModelInput {
            target_embeds: model.embed(ids_tensor(&ids, &device)),
            target_mask: vec![vec![true; len]; 4],
            source_embeds: None,
            source_mask: None,
        };
        let mut best = [f64::MAX; 3];
        for _ in 0..15 {
            let t = Instant::now();
            let out = model.forward(
                input(),
                ForwardOptions {
                    attentions: true,
                    ..Default::default()
                },
            );
            let _ = out.logits.try_to_vec_as::<f32>().unwrap();
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let pass = model.forward_shared(&input()).unwrap();
            let reqs: Vec<(usize, Tensor<2>)> = (len - 8..len)
                .map(|p| (p, pass.final_hidden(p).ones_like()))
                .collect();
            let g = pass.backward_each(reqs);
            let _ = g.last().unwrap().clone().try_to_vec_as::<f32>().unwrap();
            best[1] = best[1].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let e = input().target_embeds.detach().autodiff().require_grad();
            let out = model.forward(
                ModelInput {
                    target_embeds: e.clone(),
                    ..input()
                },
                ForwardOptions {
                    last_position_only: true,
                    ..Default::default()
                },
            );
            let grads = out.logits.sum().backward();
            let _ = e.grad(&grads).unwrap().try_to_vec_as::<f32>().unwrap();
            best[2] = best[2].min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name}: forward {:.2} ms, taped+8 backwards {:.2} ms, autodiff {:.2} ms",
            best[0] * 1e3,
            best[1] * 1e3,
            best[2] * 1e3
        );
    }
}
