//! Reading a program's per-CPU counter array: each CPU counts on its own,
//! the reader adds them up.

use aya::maps::{MapData, PerCpuArray};
use aya::Ebpf;

use crate::Error;

/// The per-CPU array `name` of `ebpf`, each of its `N` counters summed
/// over the CPUs.
pub(crate) fn read<const N: usize>(ebpf: &Ebpf, name: &'static str) -> Result<[u64; N], Error> {
    let map = ebpf.map(name).ok_or(Error::Missing(name))?;
    let array: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(|e| Error::Map(name, e))?;
    let mut sums = [0u64; N];
    for (i, sum) in sums.iter_mut().enumerate() {
        let values = array.get(&(i as u32), 0).map_err(|e| Error::Map(name, e))?;
        *sum = values.iter().sum();
    }
    Ok(sums)
}
