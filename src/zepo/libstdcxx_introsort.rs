//! libstdc++'s `std::sort` (introsort: median-of-three quicksort down to 16 elements, heapsort
//! past the depth limit, final insertion sort), step for step. torch's CPU `sort` / `argsort`
//! without `stable=True` is this algorithm, and the order it leaves equal keys in is part of the
//! reference's output (ToMe's dst token order comes from an argsort of a −1/0 buffer).

const THRESHOLD: usize = 16;

/// Sorts `a` by `less` exactly as libstdc++'s `std::sort(first, last, comp)` does.
pub fn sort_by<T: Copy>(a: &mut [T], less: impl Fn(&T, &T) -> bool) {
    let n = a.len();
    if n == 0 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(a, 0, n, depth, &less);
    if n > THRESHOLD {
        insertion_sort(a, 0, THRESHOLD, &less);
        for i in THRESHOLD..n {
            unguarded_linear_insert(a, i, &less);
        }
    } else {
        insertion_sort(a, 0, n, &less);
    }
}

fn introsort_loop<T: Copy>(a: &mut [T], first: usize, mut last: usize, mut depth: usize, less: &impl Fn(&T, &T) -> bool) {
    while last - first > THRESHOLD {
        if depth == 0 {
            heap_sort(a, first, last, less);
            return;
        }
        depth -= 1;
        let mid = first + (last - first) / 2;
        move_median_to_first(a, first, first + 1, mid, last - 1, less);
        let cut = unguarded_partition(a, first + 1, last, first, less);
        introsort_loop(a, cut, last, depth, less);
        last = cut;
    }
}

fn move_median_to_first<T: Copy>(a: &mut [T], result: usize, x: usize, y: usize, z: usize, less: &impl Fn(&T, &T) -> bool) {
    let pick = if less(&a[x], &a[y]) {
        if less(&a[y], &a[z]) {
            y
        } else if less(&a[x], &a[z]) {
            z
        } else {
            x
        }
    } else if less(&a[x], &a[z]) {
        x
    } else if less(&a[y], &a[z]) {
        z
    } else {
        y
    };
    a.swap(result, pick);
}

fn unguarded_partition<T: Copy>(a: &mut [T], mut first: usize, mut last: usize, pivot: usize, less: &impl Fn(&T, &T) -> bool) -> usize {
    loop {
        while less(&a[first], &a[pivot]) {
            first += 1;
        }
        last -= 1;
        while less(&a[pivot], &a[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        a.swap(first, last);
        first += 1;
    }
}

fn insertion_sort<T: Copy>(a: &mut [T], first: usize, last: usize, less: &impl Fn(&T, &T) -> bool) {
    for i in first + 1..last {
        if less(&a[i], &a[first]) {
            let v = a[i];
            a.copy_within(first..i, first + 1);
            a[first] = v;
        } else {
            unguarded_linear_insert(a, i, less);
        }
    }
}

fn unguarded_linear_insert<T: Copy>(a: &mut [T], mut last: usize, less: &impl Fn(&T, &T) -> bool) {
    let v = a[last];
    while less(&v, &a[last - 1]) {
        a[last] = a[last - 1];
        last -= 1;
    }
    a[last] = v;
}

/// `std::__partial_sort(first, last, last)`: make_heap then sort_heap.
fn heap_sort<T: Copy>(a: &mut [T], first: usize, mut last: usize, less: &impl Fn(&T, &T) -> bool) {
    let len = last - first;
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let v = a[first + parent];
            adjust_heap(a, first, parent, len, v, less);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    while last - first > 1 {
        last -= 1;
        let v = a[last];
        a[last] = a[first];
        adjust_heap(a, first, 0, last - first, v, less);
    }
}

fn adjust_heap<T: Copy>(a: &mut [T], first: usize, mut hole: usize, len: usize, v: T, less: &impl Fn(&T, &T) -> bool) {
    let top = hole;
    let mut second = hole;
    while second < (len - 1) / 2 {
        second = 2 * (second + 1);
        if less(&a[first + second], &a[first + second - 1]) {
            second -= 1;
        }
        a[first + hole] = a[first + second];
        hole = second;
    }
    if len % 2 == 0 && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        a[first + hole] = a[first + second - 1];
        hole = second - 1;
    }
    // push_heap
    while hole > top {
        let parent = (hole - 1) / 2;
        if !less(&a[first + parent], &v) {
            break;
        }
        a[first + hole] = a[first + parent];
        hole = parent;
    }
    a[first + hole] = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic scramble of 0..n with many duplicates.
    fn keys(n: usize, modulo: u64) -> Vec<(u64, usize)> {
        (0..n).map(|i| ((i as u64).wrapping_mul(2654435761) % modulo, i)).collect()
    }

    #[test]
    fn sorts_keys_for_all_sizes_and_depth_fallback() {
        for n in [0usize, 1, 2, 15, 16, 17, 33, 64, 257, 1000] {
            for m in [1u64, 2, 7, 1 << 40] {
                let mut a = keys(n, m);
                sort_by(&mut a, |x, y| x.0 < y.0);
                assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "n={n} m={m}");
                let mut idx: Vec<usize> = a.iter().map(|p| p.1).collect();
                idx.sort();
                assert_eq!(idx, (0..n).collect::<Vec<_>>());
            }
        }
        // heapsort path: depth 0 on more than 16 elements
        let mut a = keys(100, 13);
        heap_sort(&mut a, 0, 100, &|x: &(u64, usize), y: &(u64, usize)| x.0 < y.0);
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn small_inputs_stay_stable() {
        // ≤ 16 elements: insertion sort, equal keys keep their order
        let mut a = keys(16, 2);
        sort_by(&mut a, |x, y| x.0 < y.0);
        assert!(a.windows(2).all(|w| w[0].0 < w[1].0 || w[0].1 < w[1].1));
    }
}
