//! Row lookup (an embedding table) and its scatter-add backward.
//!
//! table [V, D], indices [B] -> out [B, D] with out[b] = table[indices[b]].
//! Backward: d_table[v] = sum of d_out[b] over every b with indices[b] == v,
//! so an index used twice collects both gradients.
//! [`index_select_rows_reference`] and [`index_add_rows_reference`] are those
//! two formulas over ndarray arrays.

use ndarray::{Array2, Ix2, Zip};

use crate::interop::{from_f64, to_f64, view};
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

fn check(op: &'static str, table_rows: usize, indices: &[usize]) -> Result<()> {
    match indices.iter().find(|&&i| i >= table_rows) {
        Some(i) => Err(TensorError::invalid(op, format!("index {i} is outside a table of {table_rows} rows"))),
        None => Ok(()),
    }
}

impl Tensor {
    /// Rows `indices` of a [V, D] table, stacked into [B, D].
    pub fn index_select_rows(&self, indices: &[usize]) -> Result<Tensor> {
        let [v, d] = *self.dims() else {
            return Err(TensorError::invalid(
                "index_select_rows",
                format!("needs a [V, D] table, got {}", self.shape()),
            ));
        };
        check("index_select_rows", v, indices)?;
        let shape = Shape::new([indices.len(), d]);
        if let Placement::Device(backend) = placement("index_select_rows", &[self])? {
            let mut out = backend.alloc(shape.numel())?;
            backend.index_select_rows(self.buffer(), indices, &mut *out, d)?;
            return Ok(Tensor::from_device(&backend, out, shape));
        }
        let mut out = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            out.extend_from_slice(&self.as_slice()[i * d..(i + 1) * d]);
        }
        Ok(Tensor::from_parts(out, shape))
    }

    /// The table gradient [V, D] from d_out [B, D]: rows added into their indices.
    pub fn index_add_rows(&self, indices: &[usize], table_rows: usize) -> Result<Tensor> {
        let [b, d] = *self.dims() else {
            return Err(TensorError::invalid("index_add_rows", format!("needs [B, D], got {}", self.shape())));
        };
        if b != indices.len() {
            return Err(TensorError::invalid("index_add_rows", format!("{b} rows but {} indices", indices.len())));
        }
        check("index_add_rows", table_rows, indices)?;
        if let Placement::Device(backend) = placement("index_add_rows", &[self])? {
            let mut out = backend.alloc(table_rows * d)?;
            backend.index_add_rows(self.buffer(), indices, &mut *out, table_rows, d)?;
            return Ok(Tensor::from_device(&backend, out, Shape::new([table_rows, d])));
        }
        let mut out = crate::pool::take_zeroed(table_rows * d);
        for (row, &i) in self.as_slice().chunks(d).zip(indices) {
            out[i * d..(i + 1) * d].iter_mut().zip(row).for_each(|(o, &g)| *o += g);
        }
        Ok(Tensor::from_parts(out, Shape::new([table_rows, d])))
    }
}

/// The specification of [`Tensor::index_select_rows`]: out[b, :] = table[indices[b], :].
pub fn index_select_rows_reference(table: &Tensor, indices: &[usize]) -> Result<Tensor> {
    let op = "index_select_rows_reference";
    let table = view::<Ix2>(op, table)?;
    check(op, table.nrows(), indices)?;
    let mut out = Array2::<f32>::zeros((indices.len(), table.ncols()));
    Zip::from(out.rows_mut()).and(indices).for_each(|mut row, &i| row.assign(&table.row(i)));
    Ok(Tensor::from_ndarray(out))
}

/// The specification of [`Tensor::index_add_rows`], from d_out [B, D]:
/// d_table[v, :] = sum of d_out[b, :] over every b with indices[b] = v, in f64.
pub fn index_add_rows_reference(d_out: &Tensor, indices: &[usize], table_rows: usize) -> Result<Tensor> {
    let op = "index_add_rows_reference";
    let d_out = to_f64::<Ix2>(op, d_out)?;
    if d_out.nrows() != indices.len() {
        return Err(TensorError::invalid(op, format!("{} rows but {} indices", d_out.nrows(), indices.len())));
    }
    check(op, table_rows, indices)?;
    let mut d_table = Array2::<f64>::zeros((table_rows, d_out.ncols()));
    for (g, &i) in d_out.rows().into_iter().zip(indices) {
        let mut row = d_table.row_mut(i);
        row += &g;
    }
    Ok(from_f64(d_table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// A table [rows, dim], a batch of indices into it (repeats likely) and a d_out for them.
    fn check(rows: usize, dim: usize, batch: usize, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let table = Tensor::randn([rows, dim], &mut rng);
        let indices: Vec<usize> = (0..batch).map(|_| rng.gen_range(0..rows)).collect();
        let out = table.index_select_rows(&indices).unwrap();
        assert_eq!(out.dims(), &[batch, dim]);
        assert_eq!(out.to_vec(), index_select_rows_reference(&table, &indices).unwrap().to_vec());
        let d_out = Tensor::randn([batch, dim], &mut rng);
        let fast = d_out.index_add_rows(&indices, rows).unwrap();
        let reference = index_add_rows_reference(&d_out, &indices, rows).unwrap();
        assert_eq!(fast.shape(), reference.shape());
        // f32 sums of up to `batch` N(0, 1) numbers against f64 sums rounded once.
        let err = fast.max_abs_diff(&reference).unwrap();
        assert!(err <= 1e-6 * batch as f32, "{rows} x {dim}, {batch} indices: {err}");
    }

    #[test]
    fn the_unet_time_embedding_and_class_table_match_the_reference() {
        check(1000, 128, 128, 1); // time steps: few repeats
        check(11, 64, 256, 2); // ten classes and the null class: many repeats
    }

    proptest! {
        #[test]
        fn any_lookup_matches_the_reference(
            rows in 1usize..8, dim in 1usize..6, batch in 0usize..20, seed in 0u64..1000,
        ) {
            check(rows, dim, batch, seed);
        }
    }

    #[test]
    fn lookup_and_scatter_add() {
        let table = Tensor::from_vec((0..6).map(|i| i as f32).collect(), [3, 2]).unwrap();
        let out = table.index_select_rows(&[2, 0, 2]).unwrap();
        assert_eq!(out.to_vec(), vec![4., 5., 0., 1., 4., 5.]);
        let g = Tensor::ones([3, 2]);
        // Row 2 was used twice: its gradient is 2.
        assert_eq!(g.index_add_rows(&[2, 0, 2], 3).unwrap().to_vec(), vec![1., 1., 0., 0., 2., 2.]);
        assert!(table.index_select_rows(&[3]).is_err());
    }
}
