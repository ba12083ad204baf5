use super::*;
use proptest::prelude::*;

fn inputs(rtt: f64, loss: f64, buffer: f64, util: f64, km: f64) -> Inputs {
    Inputs {
        rtt_ms: Input::measured(rtt),
        loss: Input::measured(loss),
        buffer_ms: Input::measured(buffer),
        utilisation: Input::measured(util),
        km: Input::modelled(km),
        // Deliverable throughput follows the loss here: a path that loses
        // everything carries nothing, a clean one carries plenty.
        throughput_ratio: Input::modelled(if loss >= 1.0 { 0.0 } else { 10.0 }),
    }
}

#[test]
fn defaults_and_breakdown_add_up() {
    let w = Weights::default();
    assert!(w.validate().is_ok());
    assert!((w.sum() - 1.25).abs() < 1e-9);
    let b = score(
        &w,
        &Ranges::default(),
        &inputs(150.0, 0.01, 1000.0, 0.5, 5000.0),
    );
    let total: f64 = b.terms.iter().map(|t| t.contribution).sum();
    assert!((total - b.score).abs() < 1e-12);
    assert_eq!(b.term("latency").unwrap().penalty, 0.5);
    assert_eq!(b.term("buffer").unwrap().penalty, 0.5);
    assert_eq!(b.term("distance").unwrap().source, Source::Modelled);
    // perfect candidate scores 0, worst scores 1
    let best = score(&w, &Ranges::default(), &inputs(0.0, 0.0, 5000.0, 0.0, 0.0));
    assert_eq!(best.score, 0.0);
    let worst = score(&w, &Ranges::default(), &inputs(1e4, 1.0, 0.0, 1.0, 1e5));
    assert!((worst.score - 1.0).abs() < 1e-12);
}

#[test]
fn invalid_weights_are_refused() {
    let mut w = Weights {
        loss: -0.1,
        ..Weights::default()
    };
    assert_eq!(w.validate(), Err(WeightsError::OutOfRange("loss", -0.1)));
    w.loss = f64::NAN;
    assert!(w.validate().is_err());
    let zero = Weights {
        latency: 0.0,
        loss: 0.0,
        buffer: 0.0,
        load: 0.0,
        distance: 0.0,
        throughput: 0.0,
    };
    assert_eq!(zero.validate(), Err(WeightsError::AllZero));
}

#[test]
fn load_penalty_is_steep_near_capacity() {
    let r = Ranges::default();
    assert_eq!(r.load_penalty(0.0), 0.0);
    assert!(r.load_penalty(0.5) < 0.1);
    assert!(r.load_penalty(0.9) > 0.4);
    assert_eq!(r.load_penalty(0.95), 1.0);
    assert_eq!(r.load_penalty(3.0), 1.0);
    assert_eq!(r.load_penalty(f64::NAN), 1.0);
}

#[test]
fn hysteresis_needs_clear_gain() {
    let s = Stability::default();
    assert!(!s.should_switch(0.30, 0.29));
    assert!(s.should_switch(0.30, 0.20));
    assert!(!s.should_switch(0.05, 0.035));
}

#[test]
fn spreading_varies_among_near_equal_only() {
    let cands = [("a", 0.100), ("b", 0.101), ("c", 0.102), ("d", 0.5)];
    let mut firsts = std::collections::BTreeMap::new();
    for i in 0..300 {
        let mut c = cands;
        rank_with_spreading(&mut c, |x| (x.0, x.1), 0.01, &format!("viewer-{i}"));
        assert_eq!(c[3].0, "d");
        *firsts.entry(c[0].0).or_insert(0) += 1;
    }
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    for n in firsts.values() {
        assert!(*n < 150, "{firsts:?}");
    }
}

proptest! {
    #[test]
    fn score_is_monotonic_in_every_penalty(
        rtt in 0.0f64..400.0, loss in 0.0f64..0.1, buf in 0.0f64..3000.0,
        util in 0.0f64..1.0, km in 0.0f64..12000.0, d in 0.0f64..100.0,
    ) {
        let w = Weights::default();
        let r = Ranges::default();
        let base = score(&w, &r, &inputs(rtt, loss, buf, util, km)).score;
        prop_assert!((0.0..=1.0).contains(&base));
        prop_assert!((score_value(&w, &r, &inputs(rtt, loss, buf, util, km)) - base).abs() < 1e-12);
        prop_assert!(score(&w, &r, &inputs(rtt + d, loss, buf, util, km)).score >= base);
        prop_assert!(score(&w, &r, &inputs(rtt, loss + d / 1000.0, buf, util, km)).score >= base);
        prop_assert!(score(&w, &r, &inputs(rtt, loss, buf + d, util, km)).score <= base);
        prop_assert!(score(&w, &r, &inputs(rtt, loss, buf, util + d / 1000.0, km)).score >= base);
        prop_assert!(score(&w, &r, &inputs(rtt, loss, buf, util, km + d)).score >= base);
    }

    #[test]
    fn scaling_weights_does_not_change_scores(k in 0.01f64..100.0, rtt in 0.0f64..400.0) {
        let w = Weights::default();
        let scaled = Weights { latency: w.latency * k, loss: w.loss * k, buffer: w.buffer * k, load: w.load * k, distance: w.distance * k, throughput: w.throughput * k };
        let r = Ranges::default();
        let i = inputs(rtt, 0.01, 500.0, 0.3, 800.0);
        prop_assert!((score(&w, &r, &i).score - score(&scaled, &r, &i).score).abs() < 1e-9);
    }
}
