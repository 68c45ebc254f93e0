//! Splits a profile across agents: users, a disjoint share of the dataset,
//! and a seed for each. Shares add up exactly: 50 users over 3 agents is
//! 17/17/16, never 16/16/16. A trace replay's rows are dealt by index
//! instead (row k to agent k mod N, arrival and prompt together), so each
//! agent's share spans the whole trace.

use std::ops::Range;

use crate::profile::{Load, Model, Profile};

/// One agent's slice of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The agent's position (0-based).
    pub index: u32,
    /// Its users in each step (closed loop); empty for open loop, where
    /// every agent takes its own sub-stream of the global schedule.
    pub users: Vec<u32>,
    /// Global number of its first user.
    pub first_user: u32,
    /// Its share of the concurrency cap (open loop).
    pub max_concurrency: Option<u32>,
    /// Its share of the run's count of requests, when the run counts them.
    pub requests: Option<u64>,
    /// Its share of the dataset, as positions in the whole dataset (a
    /// trace replay deals its rows by index instead).
    pub prompts: Range<usize>,
    /// Its seed.
    pub seed: u64,
}

impl Slice {
    /// Its most users in any step.
    pub fn peak_users(&self) -> u32 {
        self.users.iter().copied().max().unwrap_or(0)
    }
}

/// Splits `total` into `parts` shares that differ by at most one and add
/// up to `total`; the larger shares come first.
pub fn split(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    let (base, extra) = (total / parts, total % parts);
    (0..parts).map(|i| base + u64::from(i < extra)).collect()
}

/// Splits `total` in proportion to `weights`, exactly: each share is its
/// proportion rounded down, and what is left goes one by one to the
/// largest remainders (the first agent on a tie).
pub fn split_by(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if sum == 0 {
        return split(total, weights.len() as u32);
    }
    let exact: Vec<(u64, u128)> = weights
        .iter()
        .map(|w| {
            let n = u128::from(total) * u128::from(*w);
            ((n / sum) as u64, n % sum)
        })
        .collect();
    let mut shares: Vec<u64> = exact.iter().map(|(q, _)| *q).collect();
    let left = total - shares.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| exact[*b].1.cmp(&exact[*a].1).then(a.cmp(b)));
    for i in order.into_iter().take(left as usize) {
        shares[i] += 1;
    }
    shares
}

/// Consecutive ranges with the sizes of [`split`].
fn ranges(total: usize, parts: u32) -> Vec<Range<usize>> {
    let mut start = 0;
    split(total as u64, parts)
        .into_iter()
        .map(|n| {
            let r = start..start + n as usize;
            start = r.end;
            r
        })
        .collect()
}

/// SplitMix64's finaliser: derives independent seeds from one.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How many of `agents` agents get load: all of them for open-loop
/// arrivals, at most one per user for closed-loop users.
pub fn loaded_agents(load: &Load, agents: u32) -> u32 {
    if load.is_users() {
        agents.min(load.peak() as u32)
    } else {
        agents
    }
}

/// Every agent's slice, for `agents` agents. Fails, saying why, when the
/// profile cannot be shared among that many.
pub fn slices(profile: &Profile, agents: u32) -> Result<Vec<Slice>, String> {
    let load = &profile.load;
    let loaded = loaded_agents(load, agents) as usize;
    if load.trace.is_some() && profile.prompts.len() < loaded {
        return Err(format!(
            "{} replayed row(s) cannot give each of {loaded} agents an arrival of its own; replay more rows or use fewer agents",
            profile.prompts.len()
        ));
    }
    if profile.prompts.len() < loaded {
        return Err(format!(
            "{} prompt(s) cannot give each of {loaded} agents with load a share of its own; add prompts or use fewer agents",
            profile.prompts.len()
        ));
    }
    let caps = match &load.model {
        Model::Rate {
            max_concurrency: Some(cap),
            ..
        } => {
            if cap.get() < agents {
                return Err(format!(
                    "load.max_concurrency = {cap} cannot be shared among {agents} agents; raise it or use fewer agents"
                ));
            }
            split(u64::from(cap.get()), agents)
                .into_iter()
                .map(|n| Some(n as u32))
                .collect()
        }
        _ => vec![None; agents as usize],
    };
    // users[i][k]: agent i's users in step k.
    let mut users = vec![Vec::new(); agents as usize];
    if load.is_users() {
        for step in &load.steps {
            for (i, n) in split(step.level as u64, agents).into_iter().enumerate() {
                users[i].push(u32::try_from(n).expect("a share of a user count fits a u32"));
            }
        }
    }
    let prompts = ranges(profile.prompts.len(), agents);
    // A count of requests goes with the users (closed loop), or evenly
    // with the interleaved arrivals (open loop), the larger shares first.
    let requests: Vec<Option<u64>> = match load.requests {
        None => vec![None; agents as usize],
        Some(n) if load.is_users() => {
            let weights: Vec<u64> = users
                .iter()
                .map(|u| u64::from(u.iter().copied().max().unwrap_or(0)))
                .collect();
            split_by(n, &weights).into_iter().map(Some).collect()
        }
        Some(n) => split(n, agents).into_iter().map(Some).collect(),
    };
    let mut first_user = 0;
    Ok(users
        .into_iter()
        .zip(prompts)
        .zip(caps)
        .zip(requests)
        .zip(0..)
        .map(|((((users, prompts), max_concurrency), requests), index)| {
            let slice = Slice {
                index,
                first_user,
                max_concurrency,
                requests,
                prompts,
                seed: mix(profile.seed ^ mix(u64::from(index))),
                users,
            };
            first_user += slice.peak_users();
            slice
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fifty_users_over_three_agents() {
        assert_eq!(split(50, 3), [17, 17, 16]);
        assert_eq!(split(50, 4), [13, 13, 12, 12]);
        assert_eq!(split(2, 3), [1, 1, 0]);
        assert_eq!(split(0, 2), [0, 0]);
    }

    proptest! {
        /// Shares of users and of the dataset add up exactly, differ by at
        /// most one, and the dataset shares are disjoint and in order.
        #[test]
        fn shares_add_up_for_any_agent_count(total in 0u64..1_000_000, parts in 1u32..500, data in 0usize..100_000) {
            let shares = split(total, parts);
            prop_assert_eq!(shares.len(), parts as usize);
            prop_assert_eq!(shares.iter().sum::<u64>(), total);
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            prop_assert!(max - min <= 1);
            let rs = ranges(data, parts);
            prop_assert_eq!(rs.first().map(|r| r.start), Some(0));
            prop_assert_eq!(rs.last().map(|r| r.end), Some(data));
            for pair in rs.windows(2) {
                prop_assert_eq!(pair[0].end, pair[1].start);
            }
            prop_assert_eq!(rs.iter().map(|r| r.len()).sum::<usize>(), data);
        }
    }

    #[test]
    fn slices_number_users_globally_and_seed_each_agent() {
        let text = "seed = 1\n[load]\nusers = 50\n[agents]\ncount = 3\n";
        let profile = Profile::parse(text, std::path::Path::new("p.toml"), &Default::default()).unwrap();
        let s = slices(&profile, profile.agents.get()).unwrap();
        assert_eq!(
            s.iter().map(|s| s.users.clone()).collect::<Vec<_>>(),
            [[17], [17], [16]]
        );
        assert_eq!(s.iter().map(|s| s.first_user).collect::<Vec<_>>(), [0, 17, 34]);
        assert_eq!(s.iter().map(|s| s.prompts.len()).sum::<usize>(), profile.prompts.len());
        assert_ne!(s[0].seed, s[1].seed);
        assert_eq!(s, slices(&profile, 3).unwrap(), "deterministic");
        let four = slices(&profile, 4).unwrap();
        assert_eq!(
            four.iter().map(|s| s.peak_users()).collect::<Vec<_>>(),
            [13, 13, 12, 12]
        );
    }

    #[test]
    fn a_count_of_requests_goes_with_the_users() {
        assert_eq!(split_by(40, &[17, 17, 16]), [14, 13, 13]);
        assert_eq!(split_by(40, &[4, 4]), [20, 20]);
        assert_eq!(split_by(7, &[1, 0, 2]), [2, 0, 5]);
        assert_eq!(split_by(5, &[0, 0]), [3, 2]);
        let text = "[load]\nusers = 8\nrequests = 41\n[agents]\ncount = 3\n";
        let profile = Profile::parse(text, std::path::Path::new("p.toml"), &Default::default()).unwrap();
        let s = slices(&profile, 3).unwrap();
        // 41 over users 3, 3 and 2: 15.375, 15.375 and 10.25.
        assert_eq!(
            s.iter().map(|s| s.requests).collect::<Vec<_>>(),
            [Some(16), Some(15), Some(10)]
        );
        let text = "[load]\nrate = 10\nrequests = 41\n";
        let profile = Profile::parse(text, std::path::Path::new("p.toml"), &Default::default()).unwrap();
        assert_eq!(profile.load.duration(), std::time::Duration::from_millis(4_100));
        let s = slices(&profile, 3).unwrap();
        assert_eq!(
            s.iter().map(|s| s.requests).collect::<Vec<_>>(),
            [Some(14), Some(14), Some(13)]
        );
    }

    proptest! {
        /// A count split by weights adds up exactly, and no share is more
        /// than one off its proportion.
        #[test]
        fn weighted_shares_add_up(total in 0u64..1_000_000, weights in proptest::collection::vec(0u64..1_000, 1..20)) {
            let shares = split_by(total, &weights);
            prop_assert_eq!(shares.iter().sum::<u64>(), total);
            let sum: u64 = weights.iter().sum();
            if sum > 0 {
                for (s, w) in shares.iter().zip(&weights) {
                    let exact = total as f64 * *w as f64 / sum as f64;
                    prop_assert!((*s as f64 - exact).abs() < 1.0 + 1e-9, "{} against {}", s, exact);
                }
            }
        }
    }

    #[test]
    fn every_stage_is_split_exactly() {
        let text = "[load]\nstages = [{ users = 10, duration = \"5s\" }, { users = 25, duration = \"5s\" }, { users = 50, duration = \"5s\" }]\n";
        let profile = Profile::parse(text, std::path::Path::new("p.toml"), &Default::default()).unwrap();
        let s = slices(&profile, 3).unwrap();
        assert_eq!(s[0].users, [4, 9, 17]);
        assert_eq!(s[1].users, [3, 8, 17]);
        assert_eq!(s[2].users, [3, 8, 16]);
        assert_eq!(s.iter().map(|s| s.first_user).collect::<Vec<_>>(), [0, 17, 34]);
    }

    #[test]
    fn the_concurrency_cap_is_split_and_must_cover_every_agent() {
        let text = "[load]\nrate = 20\nmax_concurrency = 10\n";
        let profile = Profile::parse(text, std::path::Path::new("p.toml"), &Default::default()).unwrap();
        let s = slices(&profile, 3).unwrap();
        assert_eq!(
            s.iter().map(|s| s.max_concurrency).collect::<Vec<_>>(),
            [Some(4), Some(3), Some(3)]
        );
        assert!(s.iter().all(|s| s.users.is_empty()));
        let e = slices(&profile, 11).unwrap_err();
        assert!(
            e.contains("max_concurrency = 10 cannot be shared among 11 agents"),
            "{e}"
        );
    }
}
