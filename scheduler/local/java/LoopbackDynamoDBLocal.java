// DynamoDB Local, listening on 127.0.0.1 only.
//
// DynamoDB Local has no option for the address it binds: its Jetty connector listens on every
// interface, so any machine that reaches this one could read and write the scheduler's tables.
// This launcher builds the server exactly as DynamoDB Local's own main does, from the same
// command-line arguments, and sets the connector's host to loopback before it starts.
// Run as a single-file source program: java -cp <DynamoDBLocal.jar>:<lib>/* this-file args...

import java.lang.reflect.Field;
import org.eclipse.jetty.server.Connector;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import software.amazon.dynamodb.services.local.main.ServerRunner;
import software.amazon.dynamodb.services.local.server.DynamoDBProxyServer;

public class LoopbackDynamoDBLocal {
    public static void main(String[] args) throws Exception {
        DynamoDBProxyServer proxy = ServerRunner.createServerFromCommandLineArgs(args);
        Field field = DynamoDBProxyServer.class.getDeclaredField("server");
        field.setAccessible(true);
        Server server = (Server) field.get(proxy);
        Connector[] connectors = server.getConnectors();
        if (connectors.length == 0) {
            throw new IllegalStateException("DynamoDB Local has no connector to bind");
        }
        for (Connector connector : connectors) {
            ((ServerConnector) connector).setHost("127.0.0.1");
        }
        proxy.start();
        System.out.println("DynamoDB Local listening on 127.0.0.1 only");
        proxy.join();
    }
}
