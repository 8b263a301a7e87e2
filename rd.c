#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
int main(int c, char **v){ char b[64]; struct timespec a,z; int n=20000;
 clock_gettime(CLOCK_MONOTONIC,&a);
 for(int i=0;i<n;i++){int fd=open(v[1],O_RDONLY); read(fd,b,64); close(fd);}
 clock_gettime(CLOCK_MONOTONIC,&z);
 printf("%s: %.2f us/read\n", v[1], ((z.tv_sec-a.tv_sec)*1e9+(z.tv_nsec-a.tv_nsec))/n/1000.0);}
