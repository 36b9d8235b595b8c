//! Reading a program's per-CPU counter array: each CPU counts on its own,
//! the reader adds them up.
//!
//! A [`CounterReader`] holds its own descriptor of the array (a `dup` of
//! the loader's), so it can be handed to any thread and read there while
//! the loader stays with the control plane: reading a map is one syscall
//! on its descriptor and never waits on the program or on another reader.

use std::marker::PhantomData;
use std::os::fd::AsFd;

use aya::maps::{Map, MapData, PerCpuArray};
use aya::Ebpf;

use crate::Error;

/// A program's counters as a plain struct, built from its per-CPU array.
pub trait FromCounters: Sized {
    /// The array's name in the object.
    const MAP: &'static str;
    /// Counters in the array.
    const COUNT: usize;
    /// The struct from the array's `COUNT` sums, in index order.
    fn from_counters(sums: &[u64]) -> Self;
}

/// The per-CPU array of `ebpf` that `S` is read from, summed now.
pub(crate) fn read<S: FromCounters>(ebpf: &Ebpf) -> Result<S, Error> {
    let map = ebpf.map(S::MAP).ok_or(Error::Missing(S::MAP))?;
    let array: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(|e| Error::Map(S::MAP, e))?;
    sum::<S, _>(&array)
}

fn sum<S: FromCounters, T: std::borrow::Borrow<MapData>>(
    array: &PerCpuArray<T, u64>,
) -> Result<S, Error> {
    let mut sums = vec![0u64; S::COUNT];
    for (i, total) in sums.iter_mut().enumerate() {
        let values = array
            .get(&(i as u32), 0)
            .map_err(|e| Error::Map(S::MAP, e))?;
        *total = values.iter().sum();
    }
    Ok(S::from_counters(&sums))
}

/// A program's counters, readable from any thread (see the module
/// documentation).
pub struct CounterReader<S> {
    array: PerCpuArray<MapData, u64>,
    _stats: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for CounterReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterReader").finish_non_exhaustive()
    }
}

impl<S: FromCounters> CounterReader<S> {
    /// A reader of `ebpf`'s array for `S`, on a descriptor of its own.
    pub(crate) fn open(ebpf: &Ebpf) -> Result<Self, Error> {
        let map = ebpf.map(S::MAP).ok_or(Error::Missing(S::MAP))?;
        let Map::PerCpuArray(data) = map else {
            return Err(Error::Missing(S::MAP));
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::Io("dup(counters)", e))?;
        let data = MapData::from_fd(fd).map_err(|e| Error::Map(S::MAP, e))?;
        let array =
            PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|e| Error::Map(S::MAP, e))?;
        Ok(Self {
            array,
            _stats: PhantomData,
        })
    }

    /// The counters now, summed over the CPUs.
    pub fn read(&self) -> Result<S, Error> {
        sum::<S, _>(&self.array)
    }
}
