package dev.tope.hawkbit;

import org.eclipse.hawkbit.autoconfigure.security.EnableHawkbitManagedSecurityConfiguration;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.annotation.Configuration;
import org.springframework.security.config.annotation.method.configuration.EnableGlobalMethodSecurity;

/**
 * The hawkBit server the tests start: the DDI and Management APIs of
 * hawkBit 0.3.0M7 with hawkBit's managed security configuration (basic auth
 * for the Management API, target tokens for DDI), an H2 database and a
 * filesystem artifact store. Everything is configured in
 * application.properties and on the command line (see tests/support/hawkbit.py).
 */
@SpringBootApplication
@EnableHawkbitManagedSecurityConfiguration
public class TestServer {

    public static void main(final String[] args) {
        SpringApplication.run(TestServer.class, args);
    }

    /** hawkBit guards its repository services with @PreAuthorize. */
    @Configuration
    @EnableGlobalMethodSecurity(prePostEnabled = true, securedEnabled = true, proxyTargetClass = true)
    public static class MethodSecurity {
    }
}
