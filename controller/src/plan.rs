//! Splits a profile across agents: users, a disjoint share of the dataset,
//! and a seed for each. Shares add up exactly: 50 users over 3 agents is
//! 17/17/16, never 16/16/16.

use std::ops::Range;

use crate::profile::Profile;

/// One agent's slice of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The agent's position (0-based).
    pub index: u32,
    /// Its users.
    pub users: u32,
    /// Global number of its first user.
    pub first_user: u32,
    /// Its share of the dataset, as positions in the whole dataset.
    pub prompts: Range<usize>,
    /// Its seed.
    pub seed: u64,
}

/// Splits `total` into `parts` shares that differ by at most one and add
/// up to `total`; the larger shares come first.
pub fn split(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    let (base, extra) = (total / parts, total % parts);
    (0..parts).map(|i| base + u64::from(i < extra)).collect()
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

/// Every agent's slice, for `agents` agents.
pub fn slices(profile: &Profile, agents: u32) -> Vec<Slice> {
    let users = split(u64::from(profile.users()), agents);
    let prompts = ranges(profile.prompts.len(), agents);
    let mut first_user = 0;
    users
        .into_iter()
        .zip(prompts)
        .zip(0..)
        .map(|((users, prompts), index)| {
            let users = u32::try_from(users).expect("a share of a u32 fits a u32");
            let slice = Slice {
                index,
                users,
                first_user,
                prompts,
                seed: mix(profile.seed ^ mix(u64::from(index))),
            };
            first_user += users;
            slice
        })
        .collect()
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
        let s = slices(&profile, profile.agents.get());
        assert_eq!(s.iter().map(|s| s.users).collect::<Vec<_>>(), [17, 17, 16]);
        assert_eq!(s.iter().map(|s| s.first_user).collect::<Vec<_>>(), [0, 17, 34]);
        assert_eq!(s.iter().map(|s| s.prompts.len()).sum::<usize>(), profile.prompts.len());
        assert_ne!(s[0].seed, s[1].seed);
        assert_eq!(s, slices(&profile, 3), "deterministic");
        let four = slices(&profile, 4);
        assert_eq!(four.iter().map(|s| s.users).collect::<Vec<_>>(), [13, 13, 12, 12]);
    }
}
