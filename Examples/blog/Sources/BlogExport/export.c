#include <srv/swift_app.h>
SRV_SWIFT_APP("blog", "1.0.0", SRV_FLAG_THREAD_SAFE, blog_app);
