/* Runs a qir model library (model_abi.h) on raw input files and writes raw output files.
 *
 *   run_model IN_DIR OUT_DIR [REPEAT]
 *
 * reads IN_DIR/input<i>.bin (exactly qir_model_input_spec(i)->nbytes bytes each), runs the model
 * REPEAT times (default 2) on one qir_model plus once on a second one, checks that every run gives
 * the same bytes, writes OUT_DIR/output<j>.bin and prints the specs. Exit codes: 0 ok, 2 usage,
 * 3 ABI version, 4 file I/O, 5 create, 6 run, 7 runs differ, 8 bad arguments were not refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_abi.h"

static const char *dtype_name(int32_t d) {
  static const char *names[] = {"?", "float32", "float16", "int8", "uint8", "int32",
                                "int64", "bool", "float64", "int16", "uint16"};
  return d > 0 && d <= 10 ? names[d] : "?";
}

static void print_spec(const char *kind, int i, const qir_tensor_spec *s) {
  printf("%s %d %s %s [", kind, i, s->name, dtype_name(s->dtype));
  for (int k = 0; k < s->rank; ++k) printf(k ? ",%lld" : "%lld", (long long)s->dims[k]);
  printf("] %lld bytes\n", (long long)s->nbytes);
}

static int read_file(const char *path, void *buf, long n) {
  FILE *f = fopen(path, "rb");
  if (!f) { fprintf(stderr, "cannot open %s\n", path); return -1; }
  long got = (long)fread(buf, 1, (size_t)n, f);
  int extra = fgetc(f) != EOF;
  fclose(f);
  if (got != n || extra) { fprintf(stderr, "%s: expected exactly %ld bytes\n", path, n); return -1; }
  return 0;
}

static int write_file(const char *path, const void *buf, long n) {
  FILE *f = fopen(path, "wb");
  if (!f) { fprintf(stderr, "cannot create %s\n", path); return -1; }
  long put = (long)fwrite(buf, 1, (size_t)n, f);
  return fclose(f) == 0 && put == n ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s IN_DIR OUT_DIR [REPEAT]\n", argv[0]); return 2; }
  int repeat = argc > 3 ? atoi(argv[3]) : 2;
  if (qir_model_abi_version() != QIR_MODEL_ABI_VERSION) {
    fprintf(stderr, "ABI version %u, expected %d\n", qir_model_abi_version(), QIR_MODEL_ABI_VERSION);
    return 3;
  }
  int ni = qir_model_num_inputs(), no = qir_model_num_outputs();
  printf("abi %u inputs %d outputs %d arena %lld bytes\n", qir_model_abi_version(), ni, no,
         (long long)qir_model_arena_bytes());
  if (qir_model_input_spec(ni) || qir_model_input_spec(-1) || qir_model_output_spec(no)) return 8;
  const void **in = calloc((size_t)ni + 1, sizeof *in);
  void **out = calloc((size_t)no + 1, sizeof *out), **again = calloc((size_t)no + 1, sizeof *again);
  char path[4096];
  for (int i = 0; i < ni; ++i) {
    const qir_tensor_spec *s = qir_model_input_spec(i);
    print_spec("input", i, s);
    void *buf = malloc((size_t)s->nbytes + 1);
    snprintf(path, sizeof path, "%s/input%d.bin", argv[1], i);
    if (read_file(path, buf, s->nbytes)) return 4;
    in[i] = buf;
  }
  for (int j = 0; j < no; ++j) {
    const qir_tensor_spec *s = qir_model_output_spec(j);
    print_spec("output", j, s);
    out[j] = malloc((size_t)s->nbytes + 1);
    again[j] = malloc((size_t)s->nbytes + 1);
  }
  qir_model *m = qir_model_create(), *m2 = qir_model_create();
  if (!m || !m2) return 5;
  void **nulls = calloc((size_t)(ni > no ? ni : no) + 1, sizeof *nulls); /* NULL tensors: refused */
  if (qir_model_run(NULL, in, out) != QIR_MODEL_EINVAL || qir_model_run(m, NULL, out) != QIR_MODEL_EINVAL ||
      (no > 0 && qir_model_run(m, in, nulls) != QIR_MODEL_EINVAL) ||
      (ni > 0 && qir_model_run(m, (const void *const *)nulls, out) != QIR_MODEL_EINVAL))
    return 8;
  if (qir_model_run(m, in, out) != QIR_MODEL_OK) return 6;
  for (int r = 0; r <= repeat; ++r) { /* the last run uses the second model */
    if (qir_model_run(r == repeat ? m2 : m, in, again) != QIR_MODEL_OK) return 6;
    for (int j = 0; j < no; ++j)
      if (memcmp(out[j], again[j], (size_t)qir_model_output_spec(j)->nbytes)) {
        fprintf(stderr, "run %d: output %d differs from the first run\n", r + 1, j);
        return 7;
      }
  }
  for (int j = 0; j < no; ++j) {
    snprintf(path, sizeof path, "%s/output%d.bin", argv[2], j);
    if (write_file(path, out[j], qir_model_output_spec(j)->nbytes)) return 4;
  }
  qir_model_destroy(m);
  qir_model_destroy(m2);
  qir_model_destroy(NULL);
  printf("ok %d runs\n", repeat + 2);
  return 0;
}
