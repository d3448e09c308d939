/* Small-file metadata workload, timed inside one guest process so the
 * numbers measure the filesystem, not process spawn:
 *   smallfiles DIR N  ->  {"createMs":..,"statMs":..,"unlinkMs":..} per file
 * Each file is created, written with 1 KiB and closed; then stat'ed; then
 * unlinked. Built static on the host by bench/vfs.mjs and copied in. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: smallfiles DIR N\n");
    return 2;
  }
  const char *dir = argv[1];
  int n = atoi(argv[2]);
  char path[4096], buf[1024];
  for (int i = 0; i < 1024; i++) buf[i] = 'a' + i % 26;
  struct stat st;

  double t0 = now_ms();
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/f%05d", dir, i);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0 || write(fd, buf, sizeof buf) != sizeof buf || close(fd) != 0) {
      perror(path);
      return 1;
    }
  }
  double t1 = now_ms();
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/f%05d", dir, i);
    if (stat(path, &st) != 0 || st.st_size != 1024) {
      perror(path);
      return 1;
    }
  }
  double t2 = now_ms();
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/f%05d", dir, i);
    if (unlink(path) != 0) {
      perror(path);
      return 1;
    }
  }
  double t3 = now_ms();
  printf("{\"createMs\":%.4f,\"statMs\":%.4f,\"unlinkMs\":%.4f}\n", (t1 - t0) / n, (t2 - t1) / n,
         (t3 - t2) / n);
  return 0;
}
