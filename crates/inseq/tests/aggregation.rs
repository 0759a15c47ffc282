//! Word-level aggregation with the tokenizer's own word boundaries.

mod common;

use inseq::{AttributeOptions, MethodArgs, load_model};

#[test]
fn subwords_use_tokenizer_word_ids() {
    let device = burn::tensor::Device::default();
    for model in ["tiny-gpt2", "tiny-marian"] {
        let m = load_model(
            &common::model_dir(model),
            "saliency",
            MethodArgs::default(),
            &device,
        )
        .unwrap();
        let (input, target) = if model == "tiny-gpt2" {
            ("Hello ladies and", "Hello ladies and gentlemen")
        } else {
            ("Hello ladies and", "Bonjour mesdames")
        };
        let opts = AttributeOptions {
            targets: Some(vec![target.into()]),
            attribute_target: true,
            ..Default::default()
        };
        let out = m.attribute(&[input], &opts).unwrap();
        let seq = &out.sequence_attributions[0];
        let (source, target_words) = m.word_ids(seq).expect("tokens re-encode to the same ids");
        assert_eq!(target_words.len(), seq.target.len());
        let pipeline = inseq::aggregation::Pipeline::parse("vnorm,subwords").unwrap();
        let agg = m.aggregate_with(&out, &pipeline).unwrap();
        let words: Vec<String> = agg.sequence_attributions[0]
            .target
            .iter()
            .map(|t| t.token.clone())
            .collect();
        match model {
            "tiny-gpt2" => {
                assert_eq!(source, None);
                // Hel+lo, Ġla+di+es, Ġand, Ġg+ent+lem+en
                assert_eq!(words.len(), 4, "{words:?}");
                assert_eq!(target_words[..3], [Some(0), Some(0), Some(1)]);
            }
            _ => {
                let source = source.unwrap();
                assert_eq!(source.len(), seq.source.as_ref().unwrap().len());
                assert_eq!(target_words[0], None, "decoder start token is not a word");
                let src_words = agg.sequence_attributions[0].source.as_ref().unwrap().len();
                assert_eq!(src_words, 3, "Hello / ladies / and");
            }
        }
    }
}
