//! A least-recently-used map bounded by a total weight (bytes, usually).
//! Get and put are O(log n): recency is a stamp, ordered in a `BTreeMap`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

pub struct Lru<K, V> {
    map: HashMap<K, (V, u64, usize)>,
    order: BTreeMap<u64, K>,
    stamp: u64,
    weight: usize,
    limit: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// A map that keeps at most `limit` in total weight.
    pub fn new(limit: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeMap::new(),
            stamp: 0,
            weight: 0,
            limit,
        }
    }

    pub fn get(&mut self, k: &K) -> Option<V> {
        let (v, stamp, _) = self.map.get_mut(k)?;
        self.order.remove(stamp);
        self.stamp += 1;
        *stamp = self.stamp;
        self.order.insert(self.stamp, k.clone());
        Some(v.clone())
    }

    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Inserts `v` with `weight`, then drops the least recently used entries
    /// until the total fits the limit, and returns their keys. An entry
    /// heavier than the limit is not kept (and is returned).
    pub fn put(&mut self, k: K, v: V, weight: usize) -> Vec<K> {
        self.remove(&k);
        if weight > self.limit {
            return vec![k];
        }
        let mut dropped = Vec::new();
        self.stamp += 1;
        self.order.insert(self.stamp, k.clone());
        self.map.insert(k, (v, self.stamp, weight));
        self.weight += weight;
        while self.weight > self.limit {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, _, w)) = self.map.remove(&old) {
                self.weight -= w;
            }
            dropped.push(old);
        }
        dropped
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let (v, stamp, w) = self.map.remove(k)?;
        self.order.remove(&stamp);
        self.weight -= w;
        Some(v)
    }

    /// The total weight held.
    pub fn weight(&self) -> usize {
        self.weight
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_least_recent_within_the_limit() {
        let mut l = Lru::new(10);
        l.put(1, "a", 4);
        l.put(2, "b", 4);
        assert_eq!(l.get(&1), Some("a"));
        assert_eq!(l.put(3, "c", 4), vec![2]); // 12 > 10: 2 is the least recent
        assert_eq!(l.get(&2), None);
        assert_eq!(l.get(&1), Some("a"));
        assert_eq!(l.get(&3), Some("c"));
        assert_eq!(l.weight(), 8);
        assert_eq!(l.put(4, "d", 11), vec![4]); // heavier than the limit: not kept, nothing dropped
        assert_eq!(l.get(&4), None);
        assert_eq!(l.weight(), 8);
        l.put(3, "c2", 1); // replacing updates the weight
        assert_eq!(l.get(&3), Some("c2"));
    }
}
