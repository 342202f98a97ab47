//! Row lookup (an embedding table) and its scatter-add backward.
//!
//! table [V, D], indices [B] -> out [B, D] with out[b] = table[indices[b]].
//! Backward: d_table[v] = sum of d_out[b] over every b with indices[b] == v,
//! so an index used twice collects both gradients.

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

#[cfg(test)]
mod tests {
    use super::*;

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
